"""`reft import`: folders in pyreft's layout, written here by hand from its documented structure."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.folder_names import CONFIG_NAME, WEIGHTS_NAME
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from reft_cli.interop.pyreft_import import ImportOptions, import_pyreft
from tests.conftest import tiny_model_dir

D, RANK, LAYERS = 32, 4, 3


class Payload:
    """Unpickling this object runs code: it creates a file. pyreft state files must never do that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("base") / "llama", num_layers=LAYERS)


def orthogonal_rotate_layer(seed):
    """pyreft's rotate_layer: a d×r weight under torch's orthogonal parametrization, trained a bit."""

    class Rotate(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(D, RANK))
            nn.init.orthogonal_(self.weight)

    torch.manual_seed(seed)
    module = nn.utils.parametrizations.orthogonal(Rotate())
    with torch.no_grad():
        module.parametrizations.weight.original.add_(torch.randn(D, RANK).tril(-1) * 0.3)
        rotation = module.weight.T.clone()  # R, r×d
    state = {f"rotate_layer.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    return state, rotation


def pyreft_interventions():
    """(layer, class, state, reference edit) for LoReFT, ConsReFT and NodiReFT at layers 0, 1, 2."""
    torch.manual_seed(0)
    dims = {"embed_dim": torch.tensor(D), "interchange_dim": torch.tensor(D)}
    w, b = torch.randn(RANK, D) * 0.3, torch.randn(RANK)
    q, _ = torch.linalg.qr(torch.randn(D, RANK))
    lo_r = q.T.contiguous()
    loreft = {"weight": w, "bias": b, "rotate_layer": lo_r.T.contiguous()}

    cons_state, cons_r = orthogonal_rotate_layer(1)
    cons_b = torch.rand(RANK)
    consreft = {**cons_state, "learned_source": cons_b, **dims}

    w1, b1, w2 = torch.randn(RANK, D) * 0.3, torch.randn(RANK), torch.randn(RANK, D) * 0.3
    nodireft = {
        "proj_layer.weight": w2,
        "learned_source.weight": w1,
        "learned_source.bias": b1,
        **dims,
    }
    return [
        (0, "LoreftIntervention", loreft, lambda h: h + (h @ w.T + b - h @ lo_r.T) @ lo_r),
        (1, "ConsreftIntervention", consreft, lambda h: h + (cons_b - h @ cons_r.T) @ cons_r),
        (2, "NodireftIntervention", nodireft, lambda h: h + (h @ w1.T + b1) @ w2),
    ]


def write_pyreft_folder(folder, interventions, hidden=D, config_patch=None):
    """pyreft's `ReftModel.save` layout: config.json plus one torch.save'd dict per intervention."""
    folder.mkdir(parents=True)
    seen = {}
    keys = []
    for layer, *_ in interventions:
        stem = f"layer_{layer}_comp_block_output_unit_pos_nunit_1"
        seen[stem] = seen.get(stem, -1) + 1
        keys.append(f"{stem}#{seen[stem]}")
    config = {
        "intervention_constant_sources": [True] * len(interventions),
        "intervention_dimensions": [hidden] * len(interventions),
        "intervention_types": [f"<class 'pyreft.interventions.{c}'>" for _, c, *_ in interventions],
        "mode": "parallel",
        "representations": [
            [layer, "block_output", "pos", 1, RANK, *[None] * 9] for layer, *_ in interventions
        ],
        "sorted_keys": keys,
        "transformers_version": "4.45.1",
    }
    config.update(config_patch or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for key, (_layer, _cls, state, *_) in zip(keys, interventions, strict=True):
        torch.save(state, folder / f"intkey_{key}.bin")
    return folder


def reference_logits(base, interventions, ids):
    """The pyreft formulas applied by hand at the first and last token of every row."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base).eval()
    positions = [0, ids.shape[1] - 1]

    def hook_for(edit):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, positions] = edit(hidden[:, positions])
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    for layer, _cls, _state, edit in interventions:
        model.model.layers[layer].register_forward_hook(hook_for(edit))
    with torch.no_grad():
        return model(ids).logits


def run(adapter, ids):
    model = ReftModel.from_pretrained(adapter)
    with torch.no_grad():
        return model(ids, prompt_lengths=torch.full((ids.shape[0],), ids.shape[1])).logits


def do_import(folder, out, base, **options):
    return import_pyreft(ImportOptions(folder, out, base_model=str(base), **options))


def test_a_pyreft_folder_imports_and_runs_like_pyreft(tmp_path, base):
    interventions = pyreft_interventions()
    folder = write_pyreft_folder(tmp_path / "pyreft", interventions)
    result = do_import(folder, tmp_path / "out", base, positions="f1+l1")
    config = ReftConfig.load(tmp_path / "out")
    assert [(s.layer, s.type, s.rank) for s in config.interventions] == [
        (0, "loreft", RANK),
        (1, "consreft", RANK),
        (2, "direft", RANK),
    ]
    assert config.share_weights and config.positions == "f1+l1"
    ids = torch.randint(3, 259, (2, 9))
    expected = reference_logits(base, interventions, ids)
    assert torch.allclose(run(tmp_path / "out", ids), expected, atol=1e-5)
    assert not torch.allclose(expected, reference_logits(base, [], ids), atol=1e-3)
    assert any("tied" in note for note in result.notes)


def test_settings_pyreft_does_not_record_are_named_when_assumed(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    notes = " ".join(do_import(folder, tmp_path / "out", base).notes)
    assert "assumed f1+l1" in notes
    assert "dropout" in notes and "activation" in notes


def test_given_settings_are_used_and_not_reported_as_assumed(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    result = do_import(
        folder, tmp_path / "out", base, positions="f3+l2", dropout=0.1, act_fn="gelu"
    )
    config = ReftConfig.load(tmp_path / "out")
    assert config.positions == "f3+l2"
    assert all(s.dropout == 0.1 and s.act_fn == "gelu" for s in config.interventions)
    assert not any("assumed" in note for note in result.notes if "tied" not in note)


def test_untied_layout_is_inferred_from_paired_interventions(tmp_path, base):
    lo = pyreft_interventions()[0]
    second = (lo[0], lo[1], {k: v + 0.5 for k, v in lo[2].items()}, lo[3])
    folder = write_pyreft_folder(tmp_path / "pyreft", [lo, second])
    result = do_import(folder, tmp_path / "out", base, positions="f1+l1")
    config = ReftConfig.load(tmp_path / "out")
    assert not config.share_weights and len(config.interventions) == 1
    weights = load_file(tmp_path / "out" / WEIGHTS_NAME)
    assert torch.equal(weights["interventions.0.first.source.bias"], lo[2]["bias"])
    assert torch.equal(weights["interventions.0.last.source.bias"], lo[2]["bias"] + 0.5)
    assert any("untied" in note for note in result.notes)


def test_no_share_weights_needs_paired_interventions(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    with pytest.raises(ReftError, match="untied weights need two interventions per site"):
        do_import(folder, tmp_path / "out", base, share_weights=False)
    assert not (tmp_path / "out").exists()


def test_missing_config_json_says_how_to_recover(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "ckpt", pyreft_interventions())
    (folder / "config.json").unlink()
    with pytest.raises(ReftError) as err:
        do_import(folder, tmp_path / "out", base)
    message = str(err.value)
    assert "config.json is missing" in message and "trainer checkpoints" in message
    assert "load_intervention" in message and ".save(" in message
    assert "\n" not in message


def test_unknown_class_is_refused_without_importing_it(tmp_path, base):
    interventions = pyreft_interventions()
    patch = {"intervention_types": ["<class 'os.system'>"] * len(interventions)}
    folder = write_pyreft_folder(tmp_path / "pyreft", interventions, config_patch=patch)
    with pytest.raises(
        ReftError, match=re.escape("unknown intervention class \"<class 'os.system'>\"")
    ):
        do_import(folder, tmp_path / "out", base)


def test_hidden_size_mismatch_with_the_base_model_is_clear(tmp_path, base):
    layer, cls, state, edit = pyreft_interventions()[0]
    wide = {
        "weight": torch.randn(RANK, 48),
        "bias": state["bias"],
        "rotate_layer": torch.randn(48, RANK),
    }
    folder = write_pyreft_folder(tmp_path / "pyreft", [(layer, cls, wide, edit)], hidden=48)
    with pytest.raises(ReftError, match=r"hidden size 48, but .* has hidden size 32"):
        do_import(folder, tmp_path / "out", base)
    assert not (tmp_path / "out").exists()


def test_tensor_shape_mismatch_names_the_file_and_parameter(tmp_path, base):
    layer, cls, state, edit = pyreft_interventions()[0]
    bad = {**state, "bias": torch.zeros(RANK + 1)}
    folder = write_pyreft_folder(tmp_path / "pyreft", [(layer, cls, bad, edit)])
    with pytest.raises(ReftError, match=r"intkey_layer_0.*bin: bias has shape \(5,\)"):
        do_import(folder, tmp_path / "out", base)


def test_rank_in_config_json_must_match_the_weights(tmp_path, base):
    interventions = pyreft_interventions()[:1]
    patch = {"representations": [[0, "block_output", "pos", 1, RANK + 2, *[None] * 9]]}
    folder = write_pyreft_folder(tmp_path / "pyreft", interventions, config_patch=patch)
    with pytest.raises(ReftError, match="low_rank_dimension 6 but the weights have rank 4"):
        do_import(folder, tmp_path / "out", base)


def test_layer_beyond_the_base_model_is_clear(tmp_path, base):
    _layer, cls, state, edit = pyreft_interventions()[0]
    folder = write_pyreft_folder(tmp_path / "pyreft", [(5, cls, state, edit)])
    with pytest.raises(ReftError, match="layer 5 is out of range"):
        do_import(folder, tmp_path / "out", base)


def test_state_file_holding_a_list_is_refused(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    target = next(folder.glob("intkey_layer_1*.bin"))
    torch.save([torch.zeros(3)], target)
    with pytest.raises(ReftError, match="holds a list, not a dictionary of named tensors"):
        do_import(folder, tmp_path / "out", base)


def test_import_never_unpickles_arbitrary_objects(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    target = next(folder.glob("intkey_layer_0*.bin"))
    marker = tmp_path / "payload-ran"
    torch.save({"weight": Payload(marker)}, target)
    with pytest.raises(ReftError, match="not a plain tensor state file"):
        do_import(folder, tmp_path / "out", base)
    assert not marker.exists()
    torch.load(target, weights_only=False)  # the file really is a payload: a plain load runs it
    assert marker.exists()


def test_missing_state_file_is_clear(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    next(folder.glob("intkey_layer_2*.bin")).unlink()
    with pytest.raises(ReftError, match=r"intkey_layer_2.*\.bin is missing"):
        do_import(folder, tmp_path / "out", base)


def test_unsupported_pyvene_features_are_refused(tmp_path, base):
    interventions = pyreft_interventions()[:1]
    rep = [
        0,
        "block_output",
        "pos",
        1,
        RANK,
        None,
        None,
        None,
        None,
        "shared",
        None,
        None,
        None,
        None,
    ]
    folder = write_pyreft_folder(
        tmp_path / "pyreft", interventions, config_patch={"representations": [rep]}
    )
    with pytest.raises(ReftError, match=r"does not support pyvene's.*intervention_link_key"):
        do_import(folder, tmp_path / "out", base)


def test_an_existing_out_is_never_overwritten(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ReftError, match="already exists"):
        do_import(folder, out, base)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_import_leaves_nothing_behind(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    torch.save([1], next(folder.glob("intkey_layer_1*.bin")))
    with pytest.raises(ReftError):
        do_import(folder, tmp_path / "out", base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyreft"]


def test_base_model_is_required_without_reft_files(tmp_path):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    with pytest.raises(ReftError, match="pass --base-model"):
        import_pyreft(ImportOptions(folder, tmp_path / "out"))


def test_imported_folder_is_a_native_adapter(tmp_path, base):
    folder = write_pyreft_folder(tmp_path / "pyreft", pyreft_interventions())
    do_import(folder, tmp_path / "out", base)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert ReftConfig.load(tmp_path / "out").base_model == str(base)
