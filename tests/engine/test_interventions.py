"""Each intervention's formula, init, dtype handling, orthonormality and parameter count."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine import interventions as iv_module
from reft_cli.engine.interventions import INTERVENTIONS, Intervention, build_intervention, register
from reft_cli.errors import ReftError

D, R = 12, 3


def vectors(n: int = 5) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, D)


def by_hand(iv: Intervention, h: torch.Tensor) -> torch.Tensor:
    """The DESIGN.md formula for each type, one vector at a time with matrix-vector products."""
    out = []
    for x in h:
        if iv.type_name in ("loreft", "orth_direft", "consreft", "lobireft"):
            rot = iv.rotation()
        if iv.type_name == "loreft":
            y = x + rot.T @ (iv.source.weight @ x + iv.source.bias - rot @ x)
        elif iv.type_name == "noreft":
            w2x = iv.proj.weight @ x + (iv.proj.bias if iv.proj.bias is not None else 0)
            y = x + iv.proj.weight.T @ (iv.source.weight @ x + iv.source.bias - w2x)
        elif iv.type_name == "direft":
            y = x + iv.proj.weight.T @ (iv.source.weight @ x + iv.source.bias)
        elif iv.type_name == "orth_direft":
            y = x + rot.T @ (iv.source.weight @ x + iv.source.bias)
        elif iv.type_name == "consreft":
            y = x + rot.T @ (iv.source - rot @ x)
        elif iv.type_name == "lobireft":
            y = x + rot.T @ iv.source
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize(
    "name", ["loreft", "noreft", "direft", "orth_direft", "consreft", "lobireft"]
)
def test_formula_matches_hand_computation(name):
    iv = build_intervention(name, D, R)
    with torch.no_grad():  # make every parameter non-trivial, biases included
        for p in iv.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    h = vectors()
    torch.testing.assert_close(iv(h), by_hand(iv, h), rtol=1e-5, atol=1e-5)


def relu_by_hand(v: torch.Tensor) -> torch.Tensor:
    """ReLU written out, independent of torch's and transformers' activations."""
    return torch.where(v > 0, v, torch.zeros_like(v))


def by_hand_with_act(iv: Intervention, h: torch.Tensor) -> torch.Tensor:
    """The DESIGN.md formula for each type with act = ReLU, one vector at a time: act wraps
    W h + b only (never the − R h term), and ConsReFT and LoBiReFT have no act at all."""
    out = []
    for x in h:
        if iv.type_name == "loreft":
            rot = iv.rotation()
            y = x + rot.T @ (relu_by_hand(iv.source.weight @ x + iv.source.bias) - rot @ x)
        elif iv.type_name == "noreft":
            w2x = iv.proj.weight @ x
            y = x + iv.proj.weight.T @ (relu_by_hand(iv.source.weight @ x + iv.source.bias) - w2x)
        elif iv.type_name == "direft":
            y = x + iv.proj.weight.T @ relu_by_hand(iv.source.weight @ x + iv.source.bias)
        elif iv.type_name == "orth_direft":
            y = x + iv.rotation().T @ relu_by_hand(iv.source.weight @ x + iv.source.bias)
        elif iv.type_name == "consreft":
            rot = iv.rotation()
            y = x + rot.T @ (iv.source - rot @ x)
        elif iv.type_name == "lobireft":
            y = x + iv.rotation().T @ iv.source
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize(
    "name", ["loreft", "noreft", "direft", "orth_direft", "consreft", "lobireft"]
)
def test_act_fn_applies_where_the_formula_puts_it(name):
    iv = build_intervention(name, D, R, act_fn="relu")
    with torch.no_grad():
        for p in iv.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        # Biases of both signs so that ReLU zeroes some of W h + b and keeps the rest.
        # For ConsReFT and LoBiReFT, a b of both signs: an act put on it would change it.
        bias = iv.source.bias if isinstance(iv.source, nn.Linear) else iv.source
        bias.copy_(torch.linspace(-1.0, 1.0, R))
    h = vectors()
    if name not in ("consreft", "lobireft"):  # the values reach ReLU's kink: the act matters
        pre = iv.source(h)
        assert (pre < 0).any() and (pre > 0).any()
    torch.testing.assert_close(iv(h), by_hand_with_act(iv, h), rtol=1e-5, atol=1e-5)


def test_noreft_add_bias_puts_a_bias_on_w2():
    iv = build_intervention("noreft", D, R, add_bias=True)
    with torch.no_grad():
        iv.proj.bias.normal_()
    h = vectors()
    torch.testing.assert_close(iv(h), by_hand(iv, h), rtol=1e-5, atol=1e-5)
    assert build_intervention("noreft", D, R).proj.bias is None


def test_registry_holds_the_six_types():
    assert set(INTERVENTIONS) >= {
        "loreft",
        "noreft",
        "direft",
        "orth_direft",
        "consreft",
        "lobireft",
    }
    with pytest.raises(ReftError, match="unknown intervention type 'lora'"):
        build_intervention("lora", D, R)


def test_a_new_type_is_one_small_registered_class():
    @register("scale_test")
    class Scale(Intervention):
        """h + s·h."""

        def __init__(self, embed_dim, rank, **kwargs):
            super().__init__(embed_dim, rank, **kwargs)
            self.scale = nn.Parameter(torch.tensor(0.5))

        def delta(self, h):
            return self.scale * h

    try:
        h = vectors()
        torch.testing.assert_close(build_intervention("scale_test", D, R)(h), 1.5 * h)
    finally:
        del INTERVENTIONS["scale_test"]


def test_rotation_starts_orthonormal_and_equal_to_its_weight():
    iv = build_intervention("loreft", D, R)
    rot = iv.rotation()
    torch.testing.assert_close(rot @ rot.T, torch.eye(R), atol=1e-6, rtol=0)
    torch.testing.assert_close(rot, iv.rotation.weight, atol=1e-5, rtol=0)


def test_loreft_is_not_the_identity_at_init():
    iv = build_intervention("loreft", D, R)
    h = vectors()
    assert not torch.allclose(iv(h), h)


def test_rotation_stays_orthonormal_after_200_optimizer_steps():
    iv = build_intervention("loreft", D, R)
    opt = torch.optim.Adam(iv.parameters(), lr=0.05)
    h, target = vectors(16), torch.randn(16, D)
    for _ in range(200):
        opt.zero_grad()
        ((iv(h) - target) ** 2).mean().backward()
        opt.step()
    rot = iv.rotation()
    assert torch.linalg.matrix_norm(rot @ rot.T - torch.eye(R)) < 1e-5
    # and it moved: the optimizer really changed R
    assert not torch.allclose(
        iv.rotation.weight, build_intervention("loreft", D, R).rotation.weight
    )


def test_act_fn_wraps_the_learned_source():
    iv = build_intervention("direft", D, R, act_fn="relu")
    h = vectors()
    expected = h + torch.relu(iv.source(h)) @ iv.proj.weight
    torch.testing.assert_close(iv(h), expected)
    with pytest.raises(ReftError, match="unknown act_fn"):
        build_intervention("direft", D, R, act_fn="nope")


def test_dropout_acts_on_the_edited_vector_in_training_only():
    iv = build_intervention("loreft", D, R, dropout=0.5)
    h = vectors(50)
    edited = by_hand(iv, h)
    iv.eval()
    torch.testing.assert_close(iv(h), edited)
    iv.train()
    torch.manual_seed(0)
    out = iv(h)
    kept = out != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(out[kept], 2 * edited[kept])


def test_parameters_stay_fp32_and_edit_returns_in_activation_dtype():
    model = get_reft_model(
        _tiny_llama(torch.bfloat16), ReftConfig.for_layers([1], 2, rank=2, positions="l1")
    )
    assert all(p.dtype == torch.float32 for p in model.interventions.parameters())
    seen = {}

    def record(_module, _args, output):
        seen["dtype"] = output.dtype

    model.model.model.layers[1].register_forward_hook(record)
    ids = torch.randint(0, 64, (2, 6))
    model(ids, prompt_lengths=torch.tensor([4, 4]))
    assert seen["dtype"] == torch.bfloat16


def test_bf16_model_trains_a_step_with_fp32_interventions():
    model = get_reft_model(
        _tiny_llama(torch.bfloat16), ReftConfig.for_layers([0, 1], 2, rank=2, positions="f1+l1")
    )
    before = {k: v.clone() for k, v in model.trainable_state().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (2, 6))
    loss = model(ids, prompt_lengths=torch.tensor([4, 3]), labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = model.trainable_state()
    assert all(after[k].dtype == torch.float32 for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_rotation_is_computed_once_per_forward_pass(monkeypatch):
    calls = []
    real = iv_module.orthonormal_rows
    monkeypatch.setattr(iv_module, "orthonormal_rows", lambda w: calls.append(1) or real(w))
    model = get_reft_model(_tiny_llama(), ReftConfig.for_layers("all", 2, positions="f3+l3"))
    model.train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, 64, (3, 10))
    model(ids, prompt_lengths=torch.tensor([8, 9, 7]), labels=ids).loss.backward()
    assert len(calls) == 2  # one per intervention, not per position, read or recompute


def _tiny_llama(dtype=torch.float32):
    config = AutoConfig.for_model(
        "llama",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(dtype)


def test_parameter_count_llama_7b_shape():
    config = AutoConfig.for_model(
        "llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
    )
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    model = get_reft_model(base, ReftConfig.for_layers("all", 32, rank=8, positions="f7+l7"))
    interventions, head, total = model.count_parameters()
    assert interventions == 2_097_408
    assert head == 0
    assert round(100 * interventions / total, 3) == 0.031
    untied = get_reft_model(
        base, ReftConfig.for_layers("all", 32, rank=8, positions="f7+l7", share_weights=False)
    )
    assert untied.count_parameters()[0] == 2 * 2_097_408


def test_parameter_count_roberta_base_shape():
    config = AutoConfig.for_model("roberta")  # roberta-base: d=768, 12 layers
    with torch.device("meta"):
        base = AutoModel.from_config(config)
    model = get_reft_model(base, ReftConfig.for_layers("all", 12, rank=1, positions="f1"))
    interventions, _, total = model.count_parameters()
    assert interventions == 18_444
    assert round(100 * interventions / total, 3) == 0.015


@pytest.mark.parametrize("kind", ["noreft", "direft"])
def test_add_bias_gives_w2_a_bias_and_records_the_sizes(kind):
    """pyreft's NoReFT/DiReFT keep a bias on W2 (proj_layer) only when add_bias is set."""
    with_bias = build_intervention(kind, 8, 2, add_bias=True)
    without = build_intervention(kind, 8, 2)
    assert with_bias.proj.bias is not None and with_bias.proj.bias.shape == (2,)
    assert without.proj.bias is None
    assert (with_bias.embed_dim, with_bias.rank) == (8, 2)
