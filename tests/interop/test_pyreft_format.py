"""pyreft's layout: class names through an allowlist, keys, and each type's state in pyreft's names."""

import json

import pytest
import torch
from torch import nn

from reft_cli.engine.interventions import build_intervention, orthonormal_rows
from reft_cli.errors import ReftError
from reft_cli.interop.pyreft_format import (
    PYREFT_CLASSES,
    Site,
    config_json,
    from_pyreft_state,
    intervention_keys,
    read_state_file,
    to_pyreft_state,
    type_from_class_string,
)

D, R = 12, 3


def torch_orthogonal(state=None):
    """A d×r weight under torch's orthogonal parametrization, as pyreft's rotate_layer keeps it."""

    class Rotate(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(D, R))
            nn.init.orthogonal_(self.weight)

    module = nn.utils.parametrizations.orthogonal(Rotate())
    if state is not None:
        module.load_state_dict(state)
    return module


def gram_schmidt_rows(weight):
    """Orthonormal rows spanning `weight`'s row space, by classical Gram–Schmidt: an independent
    reference for the R reft exports (each row keeps a positive component along its original)."""
    rows = []
    for w in weight.double():
        for q in rows:
            w = w - (q @ w) * q
        rows.append(w / w.norm())
    return torch.stack(rows).float()


def perturbed(type_name, add_bias=False):
    torch.manual_seed(0)
    module = build_intervention(type_name, D, R, add_bias=add_bias)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module.state_dict()


def test_each_reft_type_maps_to_the_pyreft_class_of_the_design_table():
    assert PYREFT_CLASSES == {
        "loreft": "LoreftIntervention",
        "noreft": "NoreftIntervention",
        "direft": "NodireftIntervention",
        "orth_direft": "DireftIntervention",
        "consreft": "ConsreftIntervention",
        "lobireft": "LobireftIntervention",
    }


def test_class_strings_resolve_only_through_the_allowlist():
    assert type_from_class_string("<class 'pyreft.interventions.LoreftIntervention'>", "x") == (
        "loreft"
    )
    for text in (
        "<class 'pyreft.interventions.EvilIntervention'>",
        "<class 'os.system'>",
        "<class 'mymodule.LoreftIntervention'>",
        "LoreftIntervention",
        None,
    ):
        with pytest.raises(ReftError, match="unknown intervention class"):
            type_from_class_string(text, "config.json")


def test_keys_count_earlier_interventions_at_the_same_place():
    sites = [
        Site(2, "block_output", "loreft", 4),
        Site(2, "block_output", "loreft", 4),
        Site(2, "mlp_output", "loreft", 4),
    ]
    assert intervention_keys(sites) == [
        "layer_2_comp_block_output_unit_pos_nunit_1#0",
        "layer_2_comp_block_output_unit_pos_nunit_1#1",
        "layer_2_comp_mlp_output_unit_pos_nunit_1#0",
    ]


def test_config_json_has_pyvenes_fields_with_sorted_keys():
    text = config_json([Site(1, "block_output", "consreft", 4)], embed_dim=32)
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["representations"] == [[1, "block_output", "pos", 1, 4, *[None] * 9]]
    assert data["intervention_types"] == ["<class 'pyreft.interventions.ConsreftIntervention'>"]
    assert data["sorted_keys"] == ["layer_1_comp_block_output_unit_pos_nunit_1#0"]
    assert data["intervention_dimensions"] == [32]
    assert data["intervention_constant_sources"] == [True]
    assert data["mode"] == "parallel"


@pytest.mark.parametrize(
    ("type_name", "keys"),
    [
        ("loreft", {"weight", "bias", "rotate_layer"}),
        (
            "orth_direft",
            {
                "learned_source.weight",
                "learned_source.bias",
                "rotate_layer.parametrizations.weight.original",
                "rotate_layer.parametrizations.weight.0.base",
                "embed_dim",
                "interchange_dim",
            },
        ),
        (
            "consreft",
            {
                "learned_source",
                "rotate_layer.parametrizations.weight.original",
                "rotate_layer.parametrizations.weight.0.base",
                "embed_dim",
                "interchange_dim",
            },
        ),
        (
            "noreft",
            {
                "proj_layer.weight",
                "learned_source.weight",
                "learned_source.bias",
                "embed_dim",
                "interchange_dim",
            },
        ),
    ],
)
def test_state_uses_pyreft_parameter_names(type_name, keys):
    assert set(to_pyreft_state(type_name, perturbed(type_name), D)) == keys


# pyreft 0.1.0's NoreftIntervention and NodireftIntervention, as literals: W1, b is
# `learned_source` (Linear(d, r) with bias), W2 is `proj_layer` (Linear(d, r), bias only with
# add_bias), and the forward passes are
#     noreft:  h + (act(learned_source(h)) − proj_layer(h)) @ proj_layer.weight
#     direft:  h + act(learned_source(h)) @ proj_layer.weight
W1 = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 3.0]])  # learned_source.weight, r×d
B = torch.tensor([0.5, -0.5])  # learned_source.bias
W2 = torch.tensor([[0.0, 0.25, 0.0, 0.5], [-0.5, 0.0, 0.75, 0.0]])  # proj_layer.weight, r×d
H = torch.tensor([[1.0, 2.0, -1.0, 0.5]])


def pyreft_forward(type_name, h):
    """pyreft's forward for the literal W1, b, W2 above (identity act), written out."""
    source = h @ W1.T + B
    if type_name == "noreft":
        return h + (source - h @ W2.T) @ W2
    return h + source @ W2


@pytest.mark.parametrize("type_name", ["noreft", "direft"])
def test_export_writes_w1_as_learned_source_and_w2_as_proj_layer(type_name):
    module = build_intervention(type_name, 4, 2)
    with torch.no_grad():
        module.source.weight.copy_(W1)
        module.source.bias.copy_(B)
        module.proj.weight.copy_(W2)
    torch.testing.assert_close(module(H), pyreft_forward(type_name, H))  # the literals are W1, W2
    exported = to_pyreft_state(type_name, module.state_dict(), 4)
    assert torch.equal(exported["learned_source.weight"], W1)
    assert torch.equal(exported["learned_source.bias"], B)
    assert torch.equal(exported["proj_layer.weight"], W2)


@pytest.mark.parametrize("type_name", ["noreft", "direft"])
def test_import_reads_learned_source_as_w1_and_proj_layer_as_w2(type_name):
    pyreft_state = {
        "learned_source.weight": W1.clone(),
        "learned_source.bias": B.clone(),
        "proj_layer.weight": W2.clone(),
        "embed_dim": torch.tensor(4),
        "interchange_dim": torch.tensor(4),
    }
    module = build_intervention(type_name, 4, 2)
    module.load_state_dict(from_pyreft_state(type_name, pyreft_state, "f"))
    with torch.no_grad():
        torch.testing.assert_close(module(H), pyreft_forward(type_name, H))


def test_loreft_rotate_layer_is_the_transposed_orthonormal_r():
    state = perturbed("loreft")
    exported = to_pyreft_state("loreft", state, D)
    assert exported["rotate_layer"].shape == (D, R)
    # Exactly the R reft's own forward uses, and that R is the Gram–Schmidt of the weight's rows.
    module = build_intervention("loreft", D, R)
    module.load_state_dict(state)
    assert torch.equal(exported["rotate_layer"], module.rotation().T)
    torch.testing.assert_close(
        exported["rotate_layer"], gram_schmidt_rows(state["rotation.weight"]).T, atol=1e-6, rtol=0
    )
    assert torch.equal(exported["weight"], state["source.weight"])


@pytest.mark.parametrize("type_name", ["orth_direft", "consreft", "lobireft"])
def test_torch_parametrization_of_the_export_computes_r_bit_for_bit(type_name):
    state = perturbed(type_name)
    exported = to_pyreft_state(type_name, state, D)
    prefix = "rotate_layer."
    rotation = {k[len(prefix) :]: v for k, v in exported.items() if k.startswith(prefix)}
    module = torch_orthogonal(rotation)
    with torch.no_grad():
        assert torch.equal(module.weight, orthonormal_rows(state["rotation.weight"]).T)
        torch.testing.assert_close(
            module.weight, gram_schmidt_rows(state["rotation.weight"]).T, atol=1e-6, rtol=0
        )
        base = exported["rotate_layer.parametrizations.weight.0.base"]
        assert torch.allclose(base.T @ base, torch.eye(D), atol=1e-5)  # pyreft can train on
    assert int(exported["embed_dim"]) == D


def test_rotation_of_a_trained_pyreft_parametrization_is_decoded():
    module = torch_orthogonal()
    with torch.no_grad():  # training moves the reflectors, never the ±1 diagonal
        module.parametrizations.weight.original.add_(torch.randn(D, R).tril(-1) * 0.3)
    state = {f"rotate_layer.{k}": v for k, v in module.state_dict().items()}
    state["learned_source"] = torch.rand(R)
    decoded = from_pyreft_state("consreft", state, "f")
    with torch.no_grad():
        assert torch.allclose(decoded["rotation.weight"], module.weight.T, atol=1e-6)


@pytest.mark.parametrize("type_name", list(PYREFT_CLASSES))
def test_decoding_an_export_gives_back_the_orthonormal_weights(type_name):
    state = perturbed(type_name, add_bias=type_name in ("noreft", "direft"))
    decoded = from_pyreft_state(type_name, to_pyreft_state(type_name, state, D), "f")
    assert set(decoded) == set(state)
    for key, value in state.items():
        expected = orthonormal_rows(value) if key == "rotation.weight" else value
        assert torch.equal(decoded[key], expected), key
        if key == "rotation.weight":
            torch.testing.assert_close(decoded[key], gram_schmidt_rows(value), atol=1e-6, rtol=0)


def test_unexpected_and_missing_keys_name_the_class():
    state = to_pyreft_state("loreft", perturbed("loreft"), D)
    del state["bias"]
    state["surprise"] = torch.zeros(1)
    with pytest.raises(ReftError, match=r"LoreftIntervention.*missing \['bias'\].*'surprise'"):
        from_pyreft_state("loreft", state, "f")


def test_state_files_must_be_plain_tensor_dictionaries(tmp_path):
    path = tmp_path / "intkey_x.bin"
    torch.save({"weight": torch.ones(2)}, path)
    assert torch.equal(read_state_file(path)["weight"], torch.ones(2))
    torch.save([torch.ones(2)], path)
    with pytest.raises(ReftError, match="holds a list, not a dictionary of named tensors"):
        read_state_file(path)
    torch.save({"weight": 3}, path)
    with pytest.raises(ReftError, match="not a dictionary of named tensors"):
        read_state_file(path)
