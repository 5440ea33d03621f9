"""Wrapping transformers models: where edits land, padding, checkpointing, architectures, errors."""

import pytest
import torch

from reft_cli import InterventionConfig, ReftConfig, get_reft_model
from reft_cli.errors import ReftError
from tests.conftest import ENCODERS, TINY_CONFIGS, VOCAB, tiny_model


def wrap(model, layers=(1,), positions="f2+l2", share_weights=True, **kwargs):
    n = model.config.get_text_config().num_hidden_layers
    config = ReftConfig.for_layers(
        list(layers), n, positions=positions, share_weights=share_weights, **kwargs
    )
    return get_reft_model(model, config)


def test_only_selected_positions_change_at_the_intervened_layer(llama):
    model = wrap(llama, layers=[1], positions="f2+l1")
    ids = torch.randint(0, VOCAB, (1, 9))
    lengths = torch.tensor([6])  # prompt = tokens 0..5; selected: 0, 1 and 5
    with torch.no_grad(), model.disable_adapter():
        base = model(ids, prompt_lengths=lengths, output_hidden_states=True).hidden_states
    with torch.no_grad():
        edited = model(ids, prompt_lengths=lengths, output_hidden_states=True).hidden_states
    selected = [0, 1, 5]
    others = [t for t in range(9) if t not in selected]
    assert torch.equal(edited[2][0, others], base[2][0, others])  # output of block 1: bit-identical
    assert not torch.allclose(edited[2][0, selected], base[2][0, selected])
    assert torch.equal(edited[1], base[1])  # block 0 is untouched


def test_causal_states_before_the_first_edit_never_change(llama):
    model = wrap(llama, layers=[0], positions="l2")
    ids = torch.randint(0, VOCAB, (1, 9))
    lengths = torch.tensor([6])  # edits at 4 and 5
    with torch.no_grad(), model.disable_adapter():
        base = model(ids, prompt_lengths=lengths, output_hidden_states=True).hidden_states
    with torch.no_grad():
        edited = model(ids, prompt_lengths=lengths, output_hidden_states=True).hidden_states
    for layer in (1, 2):
        assert torch.equal(edited[layer][0, :4], base[layer][0, :4])
        assert not torch.allclose(edited[layer][0, 4:], base[layer][0, 4:])


def test_edits_are_applied_out_of_place(llama):
    captured = {}

    def grab(_module, _args, output):
        captured["tensor"], captured["copy"] = output, output.clone()

    llama.model.layers[1].register_forward_hook(grab)  # runs before reft's hook
    model = wrap(llama, layers=[1])
    model(torch.randint(0, VOCAB, (2, 8)), prompt_lengths=torch.tensor([6, 6]))
    assert torch.equal(captured["tensor"], captured["copy"])


@pytest.mark.parametrize("share_weights", [True, False])
def test_padded_batches_match_rows_run_one_at_a_time(share_weights):
    model = wrap(tiny_model("llama"), layers=[0, 2], positions="f2+l2", share_weights=share_weights)
    torch.manual_seed(3)
    seqs = [torch.randint(2, VOCAB, (n,)) for n in (5, 9, 3)]
    prompt_lengths = torch.tensor([3, 6, 2])
    with torch.no_grad():
        single = [
            model(s[None], prompt_lengths=prompt_lengths[i : i + 1]).logits[0]
            for i, s in enumerate(seqs)
        ]
        width = max(len(s) for s in seqs)
        for side in ("right", "left"):
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
                ids[i, span], mask[i, span] = s, 1
            position_ids = (mask.cumsum(1) - 1).clamp(min=0)
            logits = model(
                ids, mask, prompt_lengths=prompt_lengths, position_ids=position_ids
            ).logits
            for i, s in enumerate(seqs):
                span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
                torch.testing.assert_close(logits[i, span], single[i], atol=1e-5, rtol=1e-5)


def test_explicit_positions_equal_positions_from_prompt_lengths(llama):
    model = wrap(llama, layers=[0, 1], positions="f1+l1", share_weights=False)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        from_lengths = model(ids, prompt_lengths=torch.tensor([5, 4])).logits
        explicit = model(
            ids,
            intervention_positions={
                "first": torch.tensor([[0], [0]]),
                "last": torch.tensor([[4], [3]]),
            },
        ).logits
        other = model(ids, intervention_positions=torch.tensor([[1], [1]])).logits
    assert torch.equal(from_lengths, explicit)
    assert not torch.allclose(from_lengths, other)
    with pytest.raises(ReftError, match="exactly one"):
        model(ids)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = wrap(tiny_model("llama", num_layers=4), layers=[0, 2, 3], positions="f2+l2")
        torch.manual_seed(7)
        for p in model.interventions.parameters():  # same adapter both times
            torch.nn.init.normal_(p, std=0.2)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(1)
        ids = torch.randint(0, VOCAB, (3, 10))
        model(ids, prompt_lengths=torch.tensor([7, 8, 6]), labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-5)
        assert grads[0][name].abs().sum() > 0


def test_several_interventions_at_one_layer_compose_in_order(llama):
    sites = [InterventionConfig(1, "loreft", rank=2), InterventionConfig(1, "direft", rank=2)]
    model = get_reft_model(llama, ReftConfig(interventions=sites, positions="l1"))
    ids = torch.randint(0, VOCAB, (1, 6))
    seen = {}
    llama.model.layers[1].register_forward_hook(lambda m, a, o: seen.update(out=o.clone()) or None)
    with torch.no_grad(), model.disable_adapter():
        model(ids, prompt_lengths=torch.tensor([6]))
        h = seen["out"][0, 5]
    with torch.no_grad():
        model(ids, prompt_lengths=torch.tensor([6]))
        first, second = model.interventions[0]["all"], model.interventions[1]["all"]
        torch.testing.assert_close(seen["out"][0, 5], second(first(h)), atol=1e-6, rtol=1e-6)


def test_base_weights_frozen_and_train_eval_reach_interventions(llama):
    model = wrap(llama, layers=[0, 1, 2], dropout=0.1)
    assert all(not p.requires_grad for p in model.model.parameters())
    assert all(p.requires_grad for p in model.interventions.parameters())
    model.train()
    assert all(m.training for m in model.interventions.modules())
    model.eval()
    assert not any(m.training for m in model.interventions.modules())


def test_layer_out_of_range_is_a_clear_error(llama):
    with pytest.raises(ReftError, match="layer 3 is out of range: the model has 3 layers"):
        wrap(llama, layers=[3])
    with pytest.raises(ReftError, match="out of range"):
        get_reft_model(llama, ReftConfig(interventions=[InterventionConfig(-1)]))


def test_layers_spec_forms():
    assert ReftConfig.for_layers("2;4", 6).interventions[1].layer == 4
    assert len(ReftConfig.for_layers("all", 6).interventions) == 6
    with pytest.raises(ReftError, match="invalid layers"):
        ReftConfig.for_layers("two", 6)


def test_unwrapping_restores_the_base_model(llama):
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        base = llama(ids).logits
        model = wrap(llama, layers=[0])
        assert not torch.equal(model(ids, prompt_lengths=torch.tensor([6])).logits, base)
        assert torch.equal(model.unload()(ids).logits, base)


# Which components each family lacks; everything else must wrap, run and train.
MISSING = {"opt": {"mlp_output"}, "bert": {"mlp_output"}, "roberta": {"mlp_output"}}
COMPONENTS = ["block_output", "block_input", "attention_output", "mlp_output"]


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("component", COMPONENTS)
def test_every_architecture_wraps_runs_and_trains(model_type, component):
    model = tiny_model(model_type, num_layers=2)
    task = "seq_cls" if model_type in ENCODERS else "causal_lm"
    config = ReftConfig.for_layers(
        [0, 1], 2, component=component, positions="f1+l1", share_weights=False, task_type=task
    )
    if component in MISSING.get(model_type, ()):
        with pytest.raises(ReftError, match="has no mlp submodule"):
            get_reft_model(model, config)
        return
    reft = get_reft_model(model, config)
    ids = torch.randint(3, VOCAB, (2, 8))
    labels = torch.tensor([0, 1]) if task == "seq_cls" else ids
    with torch.no_grad(), reft.disable_adapter():
        base = reft(ids, prompt_lengths=torch.tensor([6, 5])).logits
    out = reft(ids, prompt_lengths=torch.tensor([6, 5]), labels=labels)
    assert not torch.allclose(out.logits, base)
    out.loss.backward()
    for name, p in reft.named_parameters():
        if name.startswith("interventions."):
            assert p.grad is not None, name
        elif not p.requires_grad:
            assert p.grad is None
    rank = reft.interventions[0]["last"].source.weight  # layer 0 reaches every output
    assert rank.grad.abs().sum() > 0
    if task == "seq_cls":
        assert reft.head_names and all(
            model.get_parameter(n).grad is not None for n in reft.head_names
        )
