"""The adapter folder: save → load symmetry, checkpoints, and clear errors for broken folders."""

import functools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from reft_cli import ReftConfig, ReftModel, get_reft_model
from reft_cli.engine.adapter_io import check_tensors, current_umask
from reft_cli.engine.folder_names import CONFIG_NAME, WEIGHTS_NAME
from reft_cli.errors import ReftError
from tests.conftest import VOCAB, tiny_model


def trained(model_type="llama", task_type="causal_lm", **kwargs):
    """A wrapped tiny model whose adapter weights differ from a fresh init."""
    model = tiny_model(model_type)
    config = ReftConfig.for_layers(
        [0, 2], 3, rank=2, positions="f1+l2", share_weights=False, task_type=task_type, **kwargs
    )
    reft = get_reft_model(model, config)
    with torch.no_grad():
        for p in reft.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return reft


def outputs(reft, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        return reft(ids, prompt_lengths=torch.tensor([6, 5])).logits


def test_save_then_load_gives_bit_identical_outputs(tmp_path):
    reft = trained(act_fn="gelu")
    reft.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = ReftModel.from_pretrained(tmp_path, tiny_model("llama"))
    assert torch.equal(outputs(loaded), outputs(reft))
    assert loaded.reft_config.interventions[0].act_fn == "gelu"


def test_classification_head_is_saved_and_restored(tmp_path):
    reft = trained("bert", task_type="seq_cls")
    reft.save_pretrained(tmp_path)
    assert any(k.startswith("head.") for k in load_file(tmp_path / WEIGHTS_NAME))
    fresh = tiny_model("bert")  # same frozen backbone, a different head
    torch.nn.init.normal_(fresh.classifier.weight)
    loaded = ReftModel.from_pretrained(tmp_path, fresh)
    assert torch.equal(outputs(loaded), outputs(reft))


def test_config_records_what_is_needed_to_rebuild(tmp_path):
    trained().save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert data["format_version"] == 1
    assert data["hidden_size"] == 32 and data["num_layers"] == 3
    assert data["positions"] == "f1+l2" and data["share_weights"] is False
    assert data["interventions"][1] == {
        "layer": 2,
        "type": "loreft",
        "component": "block_output",
        "rank": 2,
        "dropout": 0.0,
        "act_fn": None,
        "add_bias": False,
    }


def test_checkpoint_folder_is_itself_loadable(tmp_path):
    reft = trained()
    checkpoint = tmp_path / "checkpoint-10"
    reft.save_pretrained(checkpoint)
    (checkpoint / "optimizer.safetensors").write_bytes(b"training state lives beside the adapter")
    assert torch.equal(
        outputs(ReftModel.from_pretrained(checkpoint, tiny_model("llama"))), outputs(reft)
    )


def test_loading_names_the_base_model_when_none_is_given(tmp_path, monkeypatch):
    reft = trained()
    reft.reft_config.base_model = "tiny-test-model"
    reft.save_pretrained(tmp_path)
    asked = {}

    def fake_load(name, **kwargs):
        asked.update(name=name, **kwargs)
        return tiny_model("llama")

    monkeypatch.setattr("reft_cli.engine.base_models.load_model", fake_load)
    loaded = ReftModel.from_pretrained(tmp_path)
    assert asked["name"] == "tiny-test-model" and asked["task_type"] == "causal_lm"
    assert torch.equal(outputs(loaded), outputs(reft))


def test_missing_folder_and_missing_config_are_clear(tmp_path):
    with pytest.raises(ReftError, match="does not exist"):
        ReftModel.from_pretrained(tmp_path / "nope", tiny_model())
    with pytest.raises(ReftError, match=r"reft_config\.json is missing"):
        ReftModel.from_pretrained(tmp_path, tiny_model())


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    trained().save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ReftError, match="corrupt"):
        ReftModel.from_pretrained(tmp_path, tiny_model())


def test_weights_that_do_not_match_the_config_are_a_clear_error(tmp_path):
    trained().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    tensors.pop(next(iter(tensors)))
    save_file(tensors, tmp_path / WEIGHTS_NAME)
    with pytest.raises(ReftError, match=r"does not match its reft_config\.json"):
        ReftModel.from_pretrained(tmp_path, tiny_model())


def test_corrupt_json_and_missing_keys_are_clear(tmp_path):
    trained().save_pretrained(tmp_path)
    path = tmp_path / CONFIG_NAME
    data = json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(ReftError, match="not valid JSON"):
        ReftModel.from_pretrained(tmp_path, tiny_model())
    del data["interventions"]
    path.write_text(json.dumps(data))
    with pytest.raises(ReftError, match=r"missing required keys \['interventions'\]"):
        ReftModel.from_pretrained(tmp_path, tiny_model())


def test_unknown_keys_from_a_newer_format_warn(tmp_path):
    reft = trained()
    reft.save_pretrained(tmp_path)
    path = tmp_path / CONFIG_NAME
    data = json.loads(path.read_text())
    data["format_version"], data["future_option"] = 2, True
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="future_option"):
        loaded = ReftModel.from_pretrained(tmp_path, tiny_model("llama"))
    assert torch.equal(outputs(loaded), outputs(reft))


def test_adapter_for_another_base_model_is_refused(tmp_path):
    trained().save_pretrained(tmp_path)
    with pytest.raises(
        ReftError, match="hidden size 32 and 3 layers, but the base model has 32 and 4"
    ):
        ReftModel.from_pretrained(tmp_path, tiny_model("llama", num_layers=4))


def test_saving_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    reft = trained()
    reft.save_pretrained(tmp_path)
    before = (tmp_path / WEIGHTS_NAME).read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("reft_cli.engine.adapter_io.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        trained().save_pretrained(tmp_path)
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_saved_files_get_the_usual_mode_not_the_temporary_files_0600(tmp_path):
    trained().save_pretrained(tmp_path / "a")
    wanted = 0o666 & ~current_umask()
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == wanted, name


def test_check_tensors_names_what_is_wrong_and_what_to_do():
    check = functools.partial(
        check_tensors,
        expected={"a": (2, 3), "b": (4,)},
        source="f.safetensors",
        described_by="the config",
        advice="fix it",
        shape_advice="use the right model",
    )
    check({"a": torch.zeros(2, 3), "b": torch.zeros(4)})
    with pytest.raises(
        ReftError,
        match=r"^f\.safetensors does not match the config \(missing \['b'\], unexpected "
        r"\['c'\]\); fix it$",
    ):
        check({"a": torch.zeros(2, 3), "c": torch.zeros(4)})
    wide = {"a": torch.zeros(2, 5), "b": torch.zeros(4)}
    with pytest.raises(
        ReftError, match=r"^f\.safetensors: a has shape \(2, 5\), expected \(2, 3\); use"
    ):
        check(wide)
    with pytest.raises(ReftError, match=r"^file a: W has shape"):
        check(wide, labels={"a": "file a: W"})
