"""Prompt-only interventions in generation: KV cache parity, padding, beams."""

import pytest
import torch

from reft_cli import ReftConfig, ReftModel, get_reft_model
from reft_cli.engine.interventions import Intervention
from reft_cli.errors import ReftError
from tests.conftest import VOCAB, tiny_model


def adapter(share_weights=True, positions="f2+l2", layers=(0, 2)):
    model = get_reft_model(
        tiny_model("llama"),
        ReftConfig.for_layers(
            list(layers), 3, rank=2, positions=positions, share_weights=share_weights
        ),
    )
    torch.manual_seed(5)
    with torch.no_grad():  # strong edits, so a decode step that re-applied them would show
        for p in model.interventions.parameters():
            p.normal_(std=1.0)
    return model.eval()


def prompts():
    torch.manual_seed(11)
    return [torch.randint(3, VOCAB, (n,)) for n in (7, 4, 9)]


GREEDY = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}


@pytest.mark.parametrize("share_weights", [True, False])
@pytest.mark.parametrize("positions", ["f2+l2", "l1", "f3"])
def test_cached_greedy_equals_full_recompute(share_weights, positions):
    model = adapter(share_weights, positions)
    for prompt in prompts():
        cached = model.generate(prompt[None], **GREEDY)
        recomputed = model.generate(prompt[None], use_cache=False, **GREEDY)
        assert torch.equal(cached, recomputed)
        with model.disable_adapter():
            base = model.model.generate(prompt[None], **GREEDY)
        assert cached.shape == base.shape
        assert not torch.equal(cached, base)  # the adapter changed what was generated


def test_edits_reach_generation():
    model = adapter()
    prompt = prompts()[0][None]
    with model.disable_adapter():
        base = model.generate(prompt, **GREEDY)
    assert not torch.equal(model.generate(prompt, **GREEDY), base)


def test_interventions_run_on_the_prompt_pass_only():
    # Decode steps read the edited prompt from the KV cache and are never edited themselves
    # (test_cached_greedy_equals_full_recompute checks the tokens; this, where the edits ran).
    model = adapter()
    prompt = prompts()[0][None]
    passes, edited = [], []  # base-model forward passes; the pass each intervention ran in
    model.model.register_forward_pre_hook(lambda *_: passes.append(1))
    for module in model.modules():
        if isinstance(module, Intervention):
            module.register_forward_hook(lambda *_: edited.append(len(passes)))
    model.generate(prompt, **GREEDY)
    assert len(passes) == GREEDY["max_new_tokens"]  # the prompt pass, then 7 decode steps
    # Layers 0 and 2, tied weights: one intervention call each, both in the prompt pass.
    assert edited == [1, 1]


def left_padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


def test_left_padded_batch_equals_rows_one_at_a_time():
    model = adapter(share_weights=False)
    rows = prompts()
    ids, mask = left_padded(rows)
    batched = model.generate(ids, mask, **GREEDY)[:, ids.shape[1] :]
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **GREEDY)[0, len(row) :]
        assert torch.equal(batched[i], alone)


def test_beams_and_several_sequences_match_the_unbatched_reference():
    model = adapter()
    rows = prompts()
    settings = {**GREEDY, "num_beams": 3, "num_return_sequences": 2}
    ids, mask = left_padded(rows)
    batched = model.generate(ids, mask, **settings)[:, ids.shape[1] :]
    for i, row in enumerate(rows):
        alone = model.generate(row[None], **settings)[:, len(row) :]
        no_cache = model.generate(row[None], use_cache=False, **settings)[:, len(row) :]
        assert torch.equal(alone, no_cache)
        assert torch.equal(batched[2 * i : 2 * i + 2], alone)


def test_generate_in_training_mode_is_refused():
    model = adapter().train()
    with pytest.raises(ReftError, match="eval mode"):
        model.generate(prompts()[0][None], **GREEDY)


def _strong(model, name, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.adapters[name].parameters():
            p.normal_(std=1.0)


SPECS = {  # three adapters that differ in layers, positions, tying and rank
    "a": dict(layers=[0, 2], rank=2, positions="f2+l2", share_weights=True),
    "b": dict(layers=[1], rank=2, positions="l1", share_weights=True),
    "c": dict(layers=[0, 1], rank=3, positions="f1+l2", share_weights=False),
}


def test_mixed_adapters_in_one_batch_equal_each_adapter_alone():
    """3 adapters + base in one batch through one ReftModel give exactly each one's own answer,
    computed on a separate base model holding that adapter alone."""
    model = ReftModel(tiny_model("llama"), ReftConfig.for_layers(num_layers=3, **SPECS["a"]), "a")
    _strong(model, "a", 1)
    for seed, name in enumerate(("b", "c"), start=2):
        model.add_adapter(name, ReftConfig.for_layers(num_layers=3, **SPECS[name]))
        _strong(model, name, seed)
    model.eval()
    torch.manual_seed(11)
    rows = [torch.randint(3, VOCAB, (n,)) for n in (7, 4, 9, 6, 5)]
    names = ["a", "b", "base", "c", "a"]
    ids, mask = left_padded(rows)
    mixed = model.generate(ids, mask, adapter_names=names, **GREEDY)[:, ids.shape[1] :]
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        own_base = tiny_model("llama")  # the same seed: the same weights, another object
        if name == "base":
            alone = own_base.generate(row[None], **GREEDY)
        else:
            single = ReftModel(own_base, ReftConfig.for_layers(num_layers=3, **SPECS[name]))
            single.adapters["default"].load_state_dict(model.adapters[name].state_dict())
            alone = single.eval().generate(row[None], **GREEDY)
        assert torch.equal(mixed[i], alone[0, len(row) :]), name
    with pytest.raises(ReftError, match="unknown adapter name 'd'"):
        model.generate(ids, mask, adapter_names=["a", "d", "base", "c", "a"], **GREEDY)
    with pytest.raises(ReftError, match="adapter_names has 2 entries for a batch of 5"):
        model.generate(ids, mask, adapter_names=["a", "b"], **GREEDY)
    model.train()
    with pytest.raises(ReftError, match="eval mode"):
        model.generate(ids, mask, adapter_names=names, **GREEDY)


def test_a_row_named_for_one_adapter_gets_none_of_the_others_edits():
    model = ReftModel(tiny_model("llama"), ReftConfig.for_layers(num_layers=3, **SPECS["a"]), "a")
    model.add_adapter("b", ReftConfig.for_layers(num_layers=3, **SPECS["b"]))
    _strong(model, "a", 1)
    _strong(model, "b", 2)
    model.eval()
    ids, mask = left_padded(prompts())
    lengths = mask.sum(1)
    with torch.no_grad():
        only_a = model(ids, mask, prompt_lengths=lengths, adapter_names=["a"] * 3).logits
        model.delete_adapter("b")
        after = model(ids, mask, prompt_lengths=lengths, adapter_names=["a"] * 3).logits
        base = model(ids, mask, prompt_lengths=lengths, adapter_names=["base"] * 3).logits
        with model.disable_adapter():
            plain = model(ids, mask, prompt_lengths=lengths).logits
    assert torch.equal(only_a, after)
    assert torch.equal(base, plain)
    assert not torch.allclose(only_a, base)
