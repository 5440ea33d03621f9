"""Prompt-only interventions in generation: KV cache parity, padding, beams."""

import pytest
import torch

from reft_cli import ReftConfig, get_reft_model
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


def test_edits_reach_generation_and_decode_steps_are_unedited():
    model = adapter()
    prompt = prompts()[0][None]
    with model.disable_adapter():
        base = model.generate(prompt, **GREEDY)
    assert not torch.equal(model.generate(prompt, **GREEDY), base)
    # A decode step re-editing its one token would differ from the full recompute reference,
    # which is what test_cached_greedy_equals_full_recompute checks; here: hooks are idle after.
    assert model._positions is None


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


def test_mixed_adapters_in_one_batch_equal_each_adapter_alone():
    from reft_cli import ReftModel
    from reft_cli.generation.mixed import generate

    first = adapter(share_weights=True, positions="f2+l2")
    base = first.model
    second = ReftModel(base, ReftConfig.for_layers([1], 3, rank=2, positions="l1"))
    torch.manual_seed(9)
    with torch.no_grad():
        for p in second.interventions.parameters():
            p.normal_(std=1.0)
    second.eval()
    adapters = {"a": first, "b": second}
    rows = prompts()
    names = ["a", "b", "base"]
    ids, mask = left_padded(rows)
    mixed = generate(adapters, ids, mask, names, **GREEDY)[:, ids.shape[1] :]
    for i, (row, name) in enumerate(zip(rows, names, strict=True)):
        if name == "base":
            with first.disable_adapter(), second.disable_adapter():
                alone = base.generate(row[None], **GREEDY)
        else:
            with (second if name == "a" else first).disable_adapter():
                alone = adapters[name].generate(row[None], **GREEDY)
        assert torch.equal(mixed[i], alone[0, len(row) :]), name
    with pytest.raises(ReftError, match="unknown adapter name 'c'"):
        generate(adapters, ids, mask, ["a", "c", "base"], **GREEDY)
    first.train()
    with pytest.raises(ReftError, match="eval mode"):
        generate(adapters, ids, mask, names, **GREEDY)
