"""One ReftModel, many named adapters: one hook per site, per-row routing, load and delete."""

import pytest
import torch

from reft_cli import ReftConfig, ReftModel
from reft_cli.errors import ReftError
from tests.conftest import VOCAB, tiny_model


def _hooks(model: ReftModel, layer: int) -> int:
    block = model.architecture.site(layer, "block_output")[0]
    return len(block._forward_hooks)


def _config(layers, **kw):
    return ReftConfig.for_layers(layers, 3, rank=2, **kw)


def test_each_site_has_one_hook_whatever_the_number_of_adapters():
    model = ReftModel(tiny_model("llama"), _config([0, 1]), "a")
    for name in ("b", "c", "d"):
        model.add_adapter(name, _config([0, 1], positions="f1+l1"))
    assert _hooks(model, 0) == 1 and _hooks(model, 1) == 1 and _hooks(model, 2) == 0
    assert model.hooks.count == 2
    model.add_adapter("e", _config([2]))
    assert _hooks(model, 2) == 1 and model.hooks.count == 3
    model.delete_adapter("e")
    assert _hooks(model, 2) == 0 and model.hooks.count == 2
    for name in ("a", "b", "c"):
        model.delete_adapter(name)
    assert model.adapter_names == ["d"] and model.active_adapter == "d"
    assert _hooks(model, 0) == 1  # d still uses layers 0 and 1
    model.unload()
    assert _hooks(model, 0) == 0 and _hooks(model, 1) == 0


def test_rows_without_names_use_the_active_adapter():
    model = ReftModel(tiny_model("llama"), _config([1]), "a")
    model.add_adapter("b", _config([1], positions="f2+l2"))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.normal_()
    model.eval()
    ids = torch.randint(3, VOCAB, (2, 6))
    lengths = torch.tensor([6, 6])
    with torch.no_grad():
        named_b = model(ids, prompt_lengths=lengths, adapter_names=["b", "b"]).logits
        model.set_adapter("b")
        active_b = model(ids, prompt_lengths=lengths).logits
        named_a = model(ids, prompt_lengths=lengths, adapter_names=["a", "a"]).logits
    assert torch.equal(named_b, active_b)
    assert not torch.allclose(named_a, named_b)
    assert model.reft_config is model.adapters["b"].config


def test_load_adapter_reads_a_saved_folder_under_a_new_name(tmp_path):
    first = ReftModel(tiny_model("llama"), _config([0, 2], positions="f1+l1"))
    with torch.no_grad():
        for p in first.adapters.parameters():
            p.add_(0.5)
    first.save_pretrained(tmp_path / "saved")
    host = ReftModel(tiny_model("llama"), _config([1]), "other")
    host.load_adapter("saved", tmp_path / "saved")
    loaded = host.trainable_state("saved")
    for key, value in first.trainable_state().items():
        assert torch.equal(loaded[key], value), key
    assert host.adapters["saved"].config.position_spec == first.reft_config.position_spec
    with pytest.raises(ReftError, match="already loaded"):
        host.load_adapter("saved", tmp_path / "saved")
    with pytest.raises(ReftError, match="cannot name an adapter"):
        host.add_adapter("base", _config([1]))


def test_a_failed_load_leaves_no_half_adapter_behind(tmp_path):
    ReftModel(tiny_model("llama"), _config([0])).save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "reft_model.safetensors").write_bytes(b"not safetensors")
    host = ReftModel(tiny_model("llama"), _config([1]), "other")
    with pytest.raises(ReftError):
        host.load_adapter("broken", tmp_path / "saved")
    assert host.adapter_names == ["other"] and host.hooks.count == 1


def test_a_classification_adapter_cannot_share_its_head():
    model = ReftModel(tiny_model("bert"), _config([0], task_type="seq_cls"))
    with pytest.raises(ReftError, match="head"):
        model.add_adapter("b", _config([1], task_type="seq_cls"))
