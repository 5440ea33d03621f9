"""`reft export`: pyreft's layout and the round trip back, hub folders with a model card, pushing."""

import json
import os
import subprocess
import sys
from typing import ClassVar

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file

from reft_cli.engine.adapter_config import InterventionConfig, ReftConfig
from reft_cli.engine.base_models import load_model
from reft_cli.engine.folder_names import CONFIG_NAME, WEIGHTS_NAME
from reft_cli.engine.interventions import orthonormal_rows
from reft_cli.engine.reft_model import ReftModel, get_reft_model
from reft_cli.errors import ReftError
from reft_cli.interop.export import export_adapter
from reft_cli.interop.pyreft_import import ImportOptions, import_pyreft
from tests.conftest import tiny_model_dir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tiny_model_dir(tmp_path_factory.mktemp("base") / "llama")
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# A tiny llama\n")
    return folder


def make_adapter(base, folder, types=("loreft",), positions="f2+l2", share_weights=True, **site):
    """A saved adapter with weights moved away from their init, as training would."""
    config = ReftConfig(
        interventions=[
            InterventionConfig(index % 3, kind, rank=3, add_bias=kind == "noreft", **site)
            for index, kind in enumerate(types)
        ],
        positions=positions,
        share_weights=share_weights,
        base_model=str(base),
    )
    torch.manual_seed(1)
    model = get_reft_model(load_model(str(base)), config)
    with torch.no_grad():
        for param in model.interventions.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(folder)
    return folder


def logits(adapter, rows=(9, 6)):
    model = ReftModel.from_pretrained(adapter)
    torch.manual_seed(2)
    ids = torch.randint(3, 259, (len(rows), 9))
    mask = torch.tensor([[1] * n + [0] * (9 - n) for n in rows])
    with torch.no_grad():
        return model(ids, mask, prompt_lengths=mask.sum(dim=1)).logits


def round_trip(base, adapter, tmp_path, keep_reft_files=True, **options):
    export_adapter(adapter, "pyreft", tmp_path / "pyreft")
    if not keep_reft_files:
        (tmp_path / "pyreft" / CONFIG_NAME).unlink()
        (tmp_path / "pyreft" / WEIGHTS_NAME).unlink()
    result = import_pyreft(
        ImportOptions(tmp_path / "pyreft", tmp_path / "back", base_model=str(base), **options)
    )
    return tmp_path / "back", result


ALL_TYPES = ("loreft", "orth_direft", "consreft", "lobireft", "noreft", "direft")


# ----------------------------------------------------------------- pyreft
def test_pyreft_export_writes_config_and_one_state_file_per_intervention(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a", ("loreft", "consreft"), share_weights=False)
    result = export_adapter(adapter, "pyreft", tmp_path / "pyreft")
    config = json.loads((tmp_path / "pyreft" / "config.json").read_text())
    assert config["sorted_keys"] == [
        "layer_0_comp_block_output_unit_pos_nunit_1#0",
        "layer_1_comp_block_output_unit_pos_nunit_1#0",
        "layer_0_comp_block_output_unit_pos_nunit_1#1",
        "layer_1_comp_block_output_unit_pos_nunit_1#1",
    ]
    assert config["intervention_types"][:2] == [
        "<class 'pyreft.interventions.LoreftIntervention'>",
        "<class 'pyreft.interventions.ConsreftIntervention'>",
    ]
    for key in config["sorted_keys"]:
        assert (tmp_path / "pyreft" / f"intkey_{key}.bin").is_file()
    assert any("positions" in note and "f2+l2" in note for note in result.notes)


def test_untied_export_puts_prefix_interventions_first(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a", ("loreft",), share_weights=False)
    export_adapter(adapter, "pyreft", tmp_path / "pyreft")
    native = load_file(adapter / WEIGHTS_NAME)
    first = torch.load(
        tmp_path / "pyreft" / "intkey_layer_0_comp_block_output_unit_pos_nunit_1#0.bin"
    )
    last = torch.load(
        tmp_path / "pyreft" / "intkey_layer_0_comp_block_output_unit_pos_nunit_1#1.bin"
    )
    assert torch.equal(first["bias"], native["interventions.0.first.source.bias"])
    assert torch.equal(last["bias"], native["interventions.0.last.source.bias"])


@pytest.mark.parametrize("share_weights", [True, False])
def test_native_pyreft_native_round_trip_is_bit_identical(base, tmp_path, share_weights):
    adapter = make_adapter(
        base, tmp_path / "a", ALL_TYPES, share_weights=share_weights, act_fn="gelu", dropout=0.1
    )
    back, result = round_trip(base, adapter, tmp_path)
    before, after = load_file(adapter / WEIGHTS_NAME), load_file(back / WEIGHTS_NAME)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(logits(back), logits(adapter))
    assert ReftConfig.load(back).to_dict() == ReftConfig.load(adapter).to_dict()
    assert not any("assumed" in note for note in result.notes)


@pytest.mark.parametrize("share_weights", [True, False])
def test_round_trip_through_pyreft_files_alone_keeps_outputs(base, tmp_path, share_weights):
    adapter = make_adapter(base, tmp_path / "a", ALL_TYPES, share_weights=share_weights)
    back, _ = round_trip(base, adapter, tmp_path, keep_reft_files=False, positions="f2+l2")
    before, after = load_file(adapter / WEIGHTS_NAME), load_file(back / WEIGHTS_NAME)
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key.endswith("rotation.weight"):  # pyreft stores R itself: exactly the exported R
            assert torch.equal(after[key], orthonormal_rows(value)), key
        else:
            assert torch.equal(after[key], value), key
    assert torch.allclose(logits(back), logits(adapter), atol=1e-5, rtol=0)
    assert ReftConfig.load(back).share_weights == share_weights


def test_reft_files_that_no_longer_match_the_pyreft_ones_are_ignored(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a", ("loreft",))
    export_adapter(adapter, "pyreft", tmp_path / "pyreft")
    path = tmp_path / "pyreft" / "intkey_layer_0_comp_block_output_unit_pos_nunit_1#0.bin"
    state = torch.load(path, weights_only=True)
    state["bias"] = state["bias"] + 1.0  # as if trained further in pyreft and saved again
    torch.save(state, path)
    result = import_pyreft(ImportOptions(tmp_path / "pyreft", tmp_path / "back", str(base)))
    assert any("does not match them" in note for note in result.notes)
    after = load_file(tmp_path / "back" / WEIGHTS_NAME)
    assert torch.equal(after["interventions.0.all.source.bias"], state["bias"])


def test_classification_head_travels_in_pytorch_model_bin(tmp_path):
    base = tiny_model_dir(tmp_path / "bert", "bert")
    config = ReftConfig.for_layers([0, 1], 3, rank=2, task_type="seq_cls", base_model=str(base))
    model = get_reft_model(load_model(str(base), task_type="seq_cls"), config)
    with torch.no_grad():
        model.model.classifier.weight.add_(1.0)
    model.save_pretrained(tmp_path / "a")
    result = export_adapter(tmp_path / "a", "pyreft", tmp_path / "pyreft")
    head = torch.load(tmp_path / "pyreft" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(head["classifier.weight"], model.model.classifier.weight)
    assert any("include_model=True" in note for note in result.notes)
    (tmp_path / "pyreft" / CONFIG_NAME).unlink()
    import_pyreft(ImportOptions(tmp_path / "pyreft", tmp_path / "back", str(base)))
    assert ReftConfig.load(tmp_path / "back").task_type == "seq_cls"
    after = load_file(tmp_path / "back" / WEIGHTS_NAME)
    assert torch.equal(after["head.classifier.weight"], model.model.classifier.weight)


def test_a_mean_pooled_head_is_not_exported_to_pyreft(tmp_path):
    base = tiny_model_dir(tmp_path / "bert", "bert")
    config = ReftConfig.for_layers(
        [0], 3, rank=2, task_type="seq_cls", pooling="mean", base_model=str(base)
    )
    model = get_reft_model(load_model(str(base), task_type="seq_cls", pooling="mean"), config)
    model.save_pretrained(tmp_path / "a")
    with pytest.raises(ReftError, match="which pyreft cannot express"):
        export_adapter(tmp_path / "a", "pyreft", tmp_path / "pyreft")


def test_classification_without_a_saved_head_keeps_the_base_models_head(tmp_path):
    base = tiny_model_dir(tmp_path / "bert", "bert")
    config = ReftConfig.for_layers([0], 3, rank=2, task_type="seq_cls", base_model=str(base))
    get_reft_model(load_model(str(base), task_type="seq_cls"), config).save_pretrained(
        tmp_path / "a"
    )
    export_adapter(tmp_path / "a", "pyreft", tmp_path / "pyreft")
    for name in (CONFIG_NAME, WEIGHTS_NAME, "pytorch_model.bin"):
        (tmp_path / "pyreft" / name).unlink()
    result = import_pyreft(
        ImportOptions(tmp_path / "pyreft", tmp_path / "back", str(base), task_type="seq_cls")
    )
    assert any("no pytorch_model.bin" in note for note in result.notes)
    head = load_file(tmp_path / "back" / WEIGHTS_NAME)["head.classifier.weight"]
    assert torch.equal(head, load_model(str(base), task_type="seq_cls").classifier.weight)


def test_a_trained_head_cannot_be_dropped_silently(base, tmp_path):
    export_adapter(make_adapter(base, tmp_path / "a"), "pyreft", tmp_path / "pyreft")
    torch.save({"lm_head.weight": torch.zeros(259, 32)}, tmp_path / "pyreft" / "pytorch_model.bin")
    with pytest.raises(ReftError, match="causal_lm adapter has no head; pass --task-type seq_cls"):
        import_pyreft(
            ImportOptions(tmp_path / "pyreft", tmp_path / "back", str(base), task_type="causal_lm")
        )
    assert not (tmp_path / "back").exists()


def test_pyreft_limits_are_reported_on_export(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a", ("noreft",), act_fn="gelu")
    notes = " ".join(export_adapter(adapter, "pyreft", tmp_path / "pyreft").notes)
    assert "act_fn=gelu" in notes
    assert "add_bias" in notes and "NoreftIntervention" in notes
    assert "bfloat16" in notes


def test_export_refuses_an_existing_out(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a")
    (tmp_path / "out").mkdir()
    with pytest.raises(ReftError, match="already exists"):
        export_adapter(adapter, "pyreft", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_export_of_a_broken_adapter_writes_nothing(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a")
    (adapter / WEIGHTS_NAME).write_bytes(b"not safetensors")
    for format in ("pyreft", "hub"):
        with pytest.raises(ReftError, match="corrupt"):
            export_adapter(adapter, format, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_unknown_format_is_refused(base, tmp_path):
    with pytest.raises(ReftError, match="unknown export format 'onnx'"):
        export_adapter(make_adapter(base, tmp_path / "a"), "onnx", tmp_path / "out")


# ----------------------------------------------------------------- hub
def front_matter(text):
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def trained_run(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "run", ("loreft", "loreft"))
    (adapter / "training_config.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "emoji.jsonl", "template": "{prompt}"},
                "train": {"learning_rate": 0.004, "num_train_epochs": 3.0, "seed": 7},
            }
        )
    )
    (adapter / "trainer_log.jsonl").write_text(
        '{"step": 10, "loss": 2.5}\n{"step": 20, "loss": 1.25}\n'
    )
    (adapter / "eval").mkdir()
    (adapter / "eval" / "eval_results.json").write_text(
        json.dumps(
            {
                "average": 0.75,
                "split": "test",
                "tasks": {"boolq": {"metric": "accuracy", "score": 0.75, "num_examples": 40}},
            }
        )
    )
    (adapter / "checkpoint-10").mkdir()
    return adapter


def test_hub_export_writes_front_matter_and_every_section(base, tmp_path):
    adapter = trained_run(base, tmp_path)
    result = export_adapter(adapter, "hub", tmp_path / "hub")
    text = (tmp_path / "hub" / "README.md").read_text()
    meta, body = front_matter(text)
    assert meta["library_name"] == "reft"
    assert meta["license"] == "mit"  # from the base model's card
    assert meta["tags"][0] == "reft" and "loreft" in meta["tags"]
    assert meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta  # a local folder is not a hub id
    for heading in (
        "## Interventions",
        "## Parameters",
        "## Training",
        "## Evaluation",
        "## Usage",
    ):
        assert heading in body
    params = sum(v.numel() for v in load_file(adapter / WEIGHTS_NAME).values())
    total = sum(p.numel() for p in load_model(str(base)).parameters())
    assert f"{params:,}" in body and f"{100 * params / total:.4f}%" in body
    assert "learning_rate | `0.004`" in body and "final training loss | 1.2500" in body
    assert "| boolq | accuracy | 0.7500 | 40 |" in body
    assert "reft generate --adapter" in body and "ReftModel.from_pretrained" in body
    copied = ["eval_results.json", "trainer_log.jsonl", "training_config.yaml"]
    assert sorted(result.files) == sorted([CONFIG_NAME, WEIGHTS_NAME, "README.md", *copied])
    assert (
        load_file(tmp_path / "hub" / WEIGHTS_NAME).keys()
        == load_file(adapter / WEIGHTS_NAME).keys()
    )


def test_hub_card_names_a_hub_base_model_and_says_when_the_license_is_unknown(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a")
    config = json.loads((adapter / CONFIG_NAME).read_text())
    config["base_model"] = "some-org/some-model"
    (adapter / CONFIG_NAME).write_text(json.dumps(config))
    result = export_adapter(adapter, "hub", tmp_path / "hub")
    meta, body = front_matter((tmp_path / "hub" / "README.md").read_text())
    assert meta["base_model"] == "some-org/some-model"
    assert "license" not in meta
    assert any("--license" in note for note in result.notes)
    assert "## Training" not in body and "## Evaluation" not in body


def test_license_option_wins(base, tmp_path):
    export_adapter(
        make_adapter(base, tmp_path / "a"), "hub", tmp_path / "hub", license="apache-2.0"
    )
    meta, _ = front_matter((tmp_path / "hub" / "README.md").read_text())
    assert meta["license"] == "apache-2.0"


# ----------------------------------------------------------------- push
class FakeApi:
    """Stands in for huggingface_hub.HfApi: records calls, or raises `error` on upload."""

    calls: ClassVar[list] = []
    error: ClassVar[Exception | None] = None

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id))

    def upload_folder(self, folder_path, repo_id, **kwargs):
        if FakeApi.error is not None:
            raise FakeApi.error
        FakeApi.calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))


@pytest.fixture
def hub(monkeypatch):
    """A logged-in, online huggingface_hub whose API never touches the network."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.error = [], None
    return FakeApi


def test_push_uploads_the_exported_folder(base, tmp_path, hub):
    result = export_adapter(
        make_adapter(base, tmp_path / "a"), "hub", tmp_path / "hub", push_to_hub="me/adapter"
    )
    assert hub.calls[0] == ("create_repo", "me/adapter")
    assert hub.calls[1][2] == sorted(result.files)
    assert result.pushed_to == "me/adapter"
    assert 'snapshot_download("me/adapter")' in (tmp_path / "hub" / "README.md").read_text()


def test_push_offline_fails_before_writing(base, tmp_path, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    adapter = make_adapter(base, tmp_path / "a")
    with pytest.raises(ReftError, match="offline mode is on"):
        export_adapter(adapter, "hub", tmp_path / "hub", push_to_hub="me/adapter")
    assert not (tmp_path / "hub").exists() and hub.calls == []


def test_push_without_a_token_fails_before_writing(base, tmp_path, hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    adapter = make_adapter(base, tmp_path / "a")
    with pytest.raises(ReftError, match=r"not logged in.*hf auth login"):
        export_adapter(adapter, "hub", tmp_path / "hub", push_to_hub="me/adapter")
    assert not (tmp_path / "hub").exists()


def test_push_with_a_bad_repo_name_fails_before_writing(base, tmp_path, hub):
    with pytest.raises(ReftError, match="invalid hub repository"):
        export_adapter(make_adapter(base, tmp_path / "a"), "hub", tmp_path / "hub", "a/b/c")
    assert not (tmp_path / "hub").exists()


def test_push_refused_by_the_hub_is_one_clear_line(base, tmp_path, hub):
    class Response:
        status_code = 401
        headers: ClassVar[dict] = {}
        request = None

    hub.error = HfHubHTTPError("401 Unauthorized", response=Response())
    with pytest.raises(ReftError) as err:
        export_adapter(
            make_adapter(base, tmp_path / "a"), "hub", tmp_path / "hub", push_to_hub="me/x"
        )
    message = str(err.value)
    assert "HTTP 401" in message and "hf upload me/x" in message and "\n" not in message
    assert (tmp_path / "hub" / "README.md").is_file()  # complete, ready to upload later


def test_push_without_network_is_one_clear_line(base, tmp_path, hub):
    hub.error = ConnectionError("Failed to resolve 'huggingface.co'")
    with pytest.raises(ReftError, match="cannot reach the hub to push me/x"):
        export_adapter(
            make_adapter(base, tmp_path / "a"), "hub", tmp_path / "hub", push_to_hub="me/x"
        )


# ----------------------------------------------------------------- command line
def reft(*args):
    return subprocess.run(
        [sys.executable, "-m", "reft_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_cli_exports_and_imports(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a", ("loreft",))
    exported = reft("export", "--adapter", adapter, "--format", "pyreft", "--out", tmp_path / "p")
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "note: pyreft does not record positions" in exported.stdout
    (tmp_path / "p" / CONFIG_NAME).unlink()
    imported = reft("import", tmp_path / "p", "--base-model", base, "--out", tmp_path / "b")
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "assumed f1+l1" in imported.stdout
    assert ReftConfig.load(tmp_path / "b").positions == "f1+l1"


def test_cli_import_error_is_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "ckpt").mkdir()
    result = reft("import", tmp_path / "ckpt", "--base-model", "x", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "config.json is missing" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
