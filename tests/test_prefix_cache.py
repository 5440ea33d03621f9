"""Frozen-prefix caching gives the plain path's losses and gradients, and reuses what it cached."""

import pytest
import torch

from reft_cli import ReftConfig, get_reft_model
from reft_cli.prefix_cache import PrefixCache
from reft_cli.steps import forward, loss_sum

from .conftest import VOCAB, tiny_model


def batch(lengths=(9, 12, 7, 10), prompts=(5, 8, 3, 1)):
    torch.manual_seed(2)
    width = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), width))
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "labels": labels,
        "prompt_lengths": torch.tensor(prompts),
        "example_ids": torch.arange(len(lengths)),
    }


def adapter(positions, share_weights, layers):
    model = get_reft_model(
        tiny_model("llama", num_layers=4),
        ReftConfig.for_layers(layers, 4, rank=2, positions=positions, share_weights=share_weights),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=0.3)
    return model


def loss_and_grads(model, logits, labels):
    total, count = loss_sum(logits, labels, "causal_lm")
    model.zero_grad()
    (total / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return (total / count).item(), grads


@pytest.mark.parametrize("share_weights", [True, False])
@pytest.mark.parametrize("positions", ["l2", "f1", "f2+l1"])
@pytest.mark.parametrize("layers", [[2], [1, 3]])
def test_cached_path_equals_plain_path(share_weights, positions, layers):
    model = adapter(positions, share_weights, layers).train()
    data = batch()
    plain_loss, plain = loss_and_grads(model, forward(model, data), data["labels"])
    cache = PrefixCache(model, budget_bytes=2**30)
    for _ in range(2):  # first computes the prefixes, then reads them back
        loss, grads = loss_and_grads(model, *cache.forward(model, data))
        assert loss == pytest.approx(plain_loss, abs=1e-5)
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], atol=1e-5, rtol=1e-5)
    assert plain_loss > 0 and any(g.abs().sum() > 0 for g in plain.values())


def test_prefixes_are_computed_once_and_then_read():
    model = adapter("l1", True, [2])
    cache = PrefixCache(model, budget_bytes=2**30)
    data = batch()  # the last row's one-token prompt leaves it no frozen prefix
    cache.forward(model, data)
    assert (cache.misses, cache.hits) == (3, 0)
    cache.forward(model, data)
    assert (cache.misses, cache.hits) == (3, 3)
    assert len(cache.entries) == 3 and "3 examples" in cache.describe()


def test_budget_bounds_what_is_kept_and_results_stay_equal():
    model = adapter("l2", True, [1])
    data = batch()
    plain_loss, _ = loss_and_grads(model, forward(model, data), data["labels"])
    cache = PrefixCache(model, budget_bytes=0)
    for _ in range(2):
        loss, _ = loss_and_grads(model, *cache.forward(model, data))
        assert loss == pytest.approx(plain_loss, abs=1e-5)
    assert cache.used == 0 and not cache.entries and cache.hits == 0


def test_the_prefix_is_before_the_first_intervened_position():
    model = adapter("f2+l1", False, [1])
    data = batch(lengths=(9, 12), prompts=(5, 8))
    assert PrefixCache(model, 0).prefix_lengths(data).tolist() == [0, 0]
    model = adapter("l2", True, [1])
    assert PrefixCache(model, 0).prefix_lengths(data).tolist() == [3, 6]
    one_token = batch(lengths=(6,), prompts=(1,))  # the last prompt token predicts the response
    assert PrefixCache(model, 0).prefix_lengths(one_token).tolist() == [0]
