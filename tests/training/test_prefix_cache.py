"""Frozen-state caching and the lm head on targets give the plain path's losses and gradients,
skip what they claim to skip, stay within budget, and step back where a model cannot be cut."""

from collections import Counter

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reft_cli import ReftConfig, get_reft_model
from reft_cli.errors import ReftError
from reft_cli.training import prefix_cache as prefix_cache_module
from reft_cli.training.loss import check_selected, forward, loss_sum
from reft_cli.training.prefix_cache import CacheState, PrefixCache
from tests.conftest import TINY_CONFIGS, VOCAB, tiny_model
from tests.training.host_reads import spy_host_reads


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


def base_model(model_type="llama", num_layers=4, **config):
    """A tiny random causal LM; `config` overrides its settings (tied embeddings, windows, ...)."""
    torch.manual_seed(0)
    settings = dict(TINY_CONFIGS[model_type], num_hidden_layers=num_layers, **config)
    model_config = AutoConfig.for_model(model_type, vocab_size=VOCAB, **settings)
    model_config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(model_config).eval()


def adapter(positions, share_weights, layers, base=None, **site):
    model = get_reft_model(
        base if base is not None else tiny_model("llama", num_layers=4),
        ReftConfig.for_layers(
            layers, 4, rank=2, positions=positions, share_weights=share_weights, **site
        ),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=0.3)
    return model.train()


def loss_and_grads(model, outputs, targets):
    total, count = loss_sum(outputs, targets, "causal_lm")
    model.zero_grad()
    (total / count).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return (total / count).item(), grads


def assert_same(model, data, cache, passes=2):
    """Each pass through `cache` (the first computes, later ones read) matches the plain path."""
    plain_loss, plain = loss_and_grads(model, *forward(model, data))
    assert plain_loss > 0 and any(g.abs().sum() > 0 for g in plain.values())
    for _ in range(passes):
        loss, grads = loss_and_grads(model, *cache.forward(model, data))
        assert loss == pytest.approx(plain_loss, abs=1e-5)
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], atol=1e-5, rtol=1e-5)


def assert_stayed_on(cache, prefix, layers, reason=""):
    """The cache did not step back: it is on with exactly these parts, for no other reason."""
    assert cache.state == CacheState(on=True, prefix=prefix, layers=layers, reason=reason)


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("share_weights", [True, False])
@pytest.mark.parametrize("positions", ["l2", "f1", "f2+l1"])
@pytest.mark.parametrize("layers", [[2], [1, 3]])
def test_every_optimization_on_equals_the_plain_path(share_weights, positions, layers):
    # Tied input and output embeddings, as in SmolLM2: the head's gradient path meets the inputs'.
    model = adapter(positions, share_weights, layers, base_model(tie_word_embeddings=True))
    cache = PrefixCache(model, 2**30, head_on_targets=True)
    # The lowest layer is edited at its output only, so its own block is frozen too.
    assert cache.start == min(layers) + 1 and cache.head_on_targets
    data = batch()
    assert_same(model, data, cache)
    assert cache.active and not cache.note
    assert_stayed_on(cache, prefix=True, layers=True)
    below, above = count_calls(model.architecture.blocks[0]), count_calls(cache.blocks[-1])
    cache.forward(model, data)  # reads the cache: the blocks below the lowest layer never run
    assert below == [] and above == [1]


@pytest.mark.parametrize(
    "switches",
    [
        {"prefix": True, "layers": False},
        {"prefix": False, "layers": True},
        {"prefix": False, "layers": False, "head_on_targets": True},
    ],
)
def test_each_optimization_alone_equals_the_plain_path(switches):
    model = adapter("l2", True, [1, 3])
    cache = PrefixCache(model, 2**30, **switches)
    assert cache.start == (2 if switches["layers"] else 0)
    assert_same(model, batch(), cache)
    assert_stayed_on(cache, prefix=switches["prefix"], layers=switches["layers"])


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt_neox"])
def test_other_families_run_from_the_lowest_layer(family):
    model = adapter("l2", True, [2, 3], tiny_model(family, num_layers=4))
    cache = PrefixCache(model, 2**30, head_on_targets=True)
    assert_same(model, batch(), cache)
    assert cache.active and cache.start == 3 and not cache.note
    assert_stayed_on(cache, prefix=True, layers=True)


@pytest.mark.parametrize("tied_embeddings", [True, False])
def test_the_lm_head_runs_on_target_positions_only(tied_embeddings):
    model = adapter("l1", True, [1], base_model(tie_word_embeddings=tied_embeddings))
    data = batch()
    seen = []
    model.model.lm_head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
    logits, targets = forward(model, data, "causal_lm", head_on_targets=True)
    responses = int((data["labels"][:, 1:] != -100).sum())
    assert seen == [torch.Size([responses, 32])] and logits.shape[0] == targets.shape[0]
    plain_loss, plain = loss_and_grads(model, *forward(model, data))
    loss, grads = loss_and_grads(model, logits, targets)
    assert loss == pytest.approx(plain_loss, abs=1e-5)
    # Both equal transformers' own shifted next-token loss.
    with torch.no_grad():
        own = model(**{k: v for k, v in data.items() if k != "example_ids"}).loss.item()
    assert loss == pytest.approx(own, abs=1e-5)
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], atol=1e-5, rtol=1e-5)


def test_a_model_that_selects_positions_its_own_way_is_a_clear_error():
    logits, targets = torch.zeros(2, 7, 16), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ReftError, match=r"set train\.lm_head_on_targets=false"):
        check_selected(logits, targets)
    check_selected(logits[0, :5], targets)


def test_states_are_computed_once_and_then_read():
    model = adapter("l1", True, [2])
    cache = PrefixCache(model, budget_bytes=2**30)
    data = batch()  # every row has lower-layer states, even the one without a prefix
    cache.forward(model, data)  # the first batch's check computes the states, the step reads them
    assert (cache.misses, cache.hits) == (4, 4)
    cache.forward(model, data)
    assert (cache.misses, cache.hits) == (4, 8)
    assert len(cache.store) == 4 and "4 examples" in cache.describe()
    assert "input to layer 3" in cache.describe()
    assert_stayed_on(cache, prefix=True, layers=True)


def test_budget_bounds_what_is_kept_and_results_stay_equal():
    model = adapter("l2", True, [1])
    cache = PrefixCache(model, budget_bytes=0)
    assert_same(model, batch(), cache)
    assert cache.store.ram_used == 0 and not len(cache.store) and cache.hits == 0
    assert_stayed_on(cache, prefix=True, layers=True)


def test_what_misses_ram_goes_to_disk_and_the_files_go_at_the_end(tmp_path):
    model = adapter("l2", True, [2])
    cache = PrefixCache(model, budget_bytes=0, disk_bytes=2**30, disk_dir=tmp_path)
    assert_same(model, batch(), cache, passes=3)
    assert len(cache.store.disk) == 4 and cache.hits == 12  # the check computes, 3 passes read
    files = list(tmp_path.glob(".frozen-cache-*/*.safetensors"))
    assert len(files) == 4 and "4 on disk" in cache.describe()
    assert_stayed_on(cache, prefix=True, layers=True)
    cache.store.clear()
    assert not list(tmp_path.iterdir())


def test_a_model_the_cut_does_not_fit_steps_back_to_the_plain_path():
    # A sliding window shorter than the rows: the cached path's masks differ, and the check on the
    # first batch catches it, drops layer caching, then the prefix, and says so.
    model = adapter("l2", True, [2], base_model("mistral", sliding_window=3))
    cache = PrefixCache(model, 2**30, head_on_targets=True)
    assert_same(model, batch(), cache)
    assert not cache.active and "differs from the plain one" in cache.describe()
    assert not cache.state.on and not cache.state.prefix and not cache.state.layers
    assert cache.state.reason.startswith(
        "frozen-state cache off: the cached path differs from the plain one (relative error"
    )


def test_a_layer_cut_that_does_not_fit_steps_back_to_the_prefix_with_fresh_states(monkeypatch):
    # Corrupt the cached input to the lowest layer, as a model the layer cut does not fit would:
    # the first batch's check must drop layer caching only, forget the states it computed for
    # the layer cut, and go on caching the prefix with states computed afresh.
    real_stack = prefix_cache_module._stack_hidden
    monkeypatch.setattr(prefix_cache_module, "_stack_hidden", lambda e: real_stack(e) + 1.0)
    model = adapter("l2", True, [2])
    cache = PrefixCache(model, 2**30)
    read = []
    real_get = cache.store.get
    cache.store.get = lambda key: read.append(real_get(key)) or read[-1]
    data = batch()
    assert_same(model, data, cache)
    assert (cache.state.on, cache.state.prefix, cache.state.layers) == (True, True, False)
    assert cache.state.reason.startswith(
        "layer caching off: the cached path differs from the plain one (relative error"
    )
    # Every state read after the step back is a prefix-only one through all 4 layers, never a
    # stale one kept for the layer cut (keys from layer 2 on, and the input to layer 2).
    after = [e for e in read if e is not None]
    assert after and all("hidden" not in e and e["key"].shape[1] == 4 for e in after)
    assert cache.misses == 3  # the three rows with a prefix, computed again after the step back


def test_a_base_model_with_dropout_is_never_cached():
    model = adapter("l2", True, [2], base_model("llama", attention_dropout=0.1))
    cache = PrefixCache(model, 2**30)
    assert not cache.active and "dropout (p=0.1)" in cache.describe()
    assert cache.state == CacheState(
        on=False,
        prefix=False,
        layers=False,
        reason="frozen-state cache off: the base model has dropout (p=0.1)",
    )


@pytest.mark.parametrize(
    ("layers", "component", "start"),
    [
        ([1, 3], "attention_output", 1),  # an edit inside block 1: it must run
        ([1, 3], "block_input", 1),  # an edit of block 1's input: it must run
        ([3], "block_output", 3),  # the last block always runs (it feeds the head)
        ([0, 2], "block_output", 1),  # block 0 alone is frozen and its output cached
    ],
)
def test_a_step_runs_from_the_first_block_an_edit_reaches(layers, component, start):
    model = adapter("l2", True, layers, component=component)
    cache = PrefixCache(model, 2**30, head_on_targets=True)
    assert cache.start == start
    assert cache.fed_site == ((start - 1, "block_output") if start > min(layers) else None)
    assert_same(model, batch(), cache)
    assert_stayed_on(cache, prefix=True, layers=True)
    skipped = count_calls(model.architecture.blocks[start - 1])
    cache.forward(model, batch())
    assert skipped == []


def test_gradient_checkpointing_keeps_layer_caching_and_equal_gradients():
    # attention_output edits inside block 1, so its checkpointed recompute must see the cached input.
    model = adapter("l2", True, [1, 3], component="attention_output")
    model.gradient_checkpointing_enable()
    cache = PrefixCache(model, 2**30)
    assert_same(model, batch(), cache)
    assert cache.start == 1 and not cache.cache_prefix and "checkpointing" in cache.describe()
    assert_stayed_on(
        cache, prefix=False, layers=True, reason="prefix caching off under gradient checkpointing"
    )


def test_the_prefix_is_before_the_first_intervened_position():
    model = adapter("f2+l1", False, [1])
    data = batch(lengths=(9, 12), prompts=(5, 8))
    assert PrefixCache(model, 0).prefix_lengths(data).tolist() == [0, 0]
    model = adapter("l2", True, [1])
    assert PrefixCache(model, 0).prefix_lengths(data).tolist() == [3, 6]
    one_token = batch(lengths=(6,), prompts=(1,))  # the last prompt token predicts the response
    assert PrefixCache(model, 0).prefix_lengths(one_token).tolist() == [0]
    assert PrefixCache(model, 0, prefix=False).prefix_lengths(data).tolist() == [0, 0]


def test_step_lengths_count_the_positions_a_step_runs():
    model = adapter("l2", True, [1])
    data = batch()
    lengths = data["attention_mask"].sum(dim=1)
    cache = PrefixCache(model, 0)
    expected = lengths - cache.prefix_lengths(data)
    assert cache.step_lengths(data["prompt_lengths"], lengths).tolist() == expected.tolist()
    assert expected.tolist() != lengths.tolist()


def count_host_reads(monkeypatch, run):
    """How many times `run()` reads tensor values back to Python, by the module that asked."""
    reads = Counter()
    with monkeypatch.context() as patch:
        spy_host_reads(patch, lambda module: reads.update([module]))
        run()
    return reads


@pytest.mark.parametrize("copies", [1, 3])
def test_a_cached_step_reads_the_host_once_per_batch_not_per_row(monkeypatch, copies):
    data = batch(lengths=(9, 12, 7, 10) * copies, prompts=(5, 8, 3, 1) * copies)
    model = adapter("l2", True, [1, 3], base_model(tie_word_embeddings=True))
    cache = PrefixCache(model, 2**30, head_on_targets=True)
    cache.checked = True  # the first batch's check compares both paths; a step does not
    computing = count_host_reads(monkeypatch, lambda: cache.forward(model, data))
    reading = count_host_reads(monkeypatch, lambda: cache.forward(model, data))
    assert cache.misses == cache.hits == 4 * copies and cache.active
    assert_stayed_on(cache, prefix=True, layers=True)
    # The cache's own: the rows' layout (one read of all prefix and total lengths) and the
    # example ids, which the trainer keeps on the host; the same for 4 rows as for 12.
    assert computing[PrefixCache.__module__] == reading[PrefixCache.__module__] == 2
    assert sum(reading.values()) <= 4 and sum(computing.values()) <= 4
