"""Packed rows give the padded path's losses and gradients, with and without the frozen-state
cache, put each row's interventions where the row sits, and step back where a model cannot pack."""

from unittest.mock import patch

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine.positions import Positions
from reft_cli.errors import ReftError
from reft_cli.training.grouped_attention import contiguous_groups
from reft_cli.training.loss import forward
from reft_cli.training.packing import Packer, packed_forward, packed_index
from reft_cli.training.prefix_cache import PrefixCache
from reft_cli.training.step_plan import split_by_keys
from tests.conftest import TINY_CONFIGS, VOCAB
from tests.training.test_prefix_cache import loss_and_grads

# Very different lengths: a row of 41 tokens next to rows of 4 to 9, as a long answer among short.
LENGTHS, PROMPTS = (6, 41, 4, 9, 13), (4, 9, 2, 8, 3)


def batch(lengths=LENGTHS, prompts=PROMPTS, left=False):
    """Rows of these lengths, right-padded, or the same rows left-padded."""
    torch.manual_seed(3)
    width = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), width))
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
    data = {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}
    if left:
        data = {
            k: torch.stack([v[i].roll(width - n) for i, n in enumerate(lengths)])
            for k, v in data.items()
        }
    return {
        **data,
        "prompt_lengths": torch.tensor(prompts),
        "example_ids": torch.arange(len(lengths)),
    }


def reft(positions="f2+l2", share_weights=False, layers=(1, 2), attention="sdpa", family="llama"):
    torch.manual_seed(0)
    settings = dict(TINY_CONFIGS[family], num_hidden_layers=4, tie_word_embeddings=True)
    config = AutoConfig.for_model(family, vocab_size=VOCAB, **settings)
    config._attn_implementation = attention
    base = AutoModelForCausalLM.from_config(config).float().eval()
    model = get_reft_model(
        base,
        ReftConfig.for_layers(
            list(layers), 4, rank=2, positions=positions, share_weights=share_weights
        ),
    )
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=0.3)
    return model.train()


def assert_equal_to_padded(model, data, run, head_on_targets):
    """`run(model, data)` gives the padded path's loss and intervention gradients (fp32, 1e-5)."""
    want_loss, want = loss_and_grads(model, *forward(model, data, "causal_lm", head_on_targets))
    assert want_loss > 0 and all(g.abs().sum() > 0 for g in want.values())
    for _ in range(2):  # with the cache: the first pass computes its states, the second reads them
        loss, grads = loss_and_grads(model, *run(model, data))
        assert loss == pytest.approx(want_loss, abs=1e-5)
        assert grads.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(grads[name], want[name], atol=1e-5, rtol=1e-5)


def test_packed_index_moves_each_row_to_its_offset():
    # Row 0 starts at 0 in its padded row and in the packed sequence; row 1 is left-padded by 2
    # and starts at 3 once packed. Unused slots become -1.
    positions = Positions(
        torch.tensor([[0, 2], [2, 4]]), torch.tensor([[True, True], [True, False]])
    )
    index = packed_index(positions, starts=torch.tensor([0, 2]), offsets=torch.tensor([0, 3]))
    assert index.tolist() == [[0, 2, 3, -1]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    ("positions", "share_weights"), [("f2+l2", False), ("f2+l2", True), ("l1", True)]
)
@pytest.mark.parametrize("head_on_targets", [True, False])
def test_a_packed_step_equals_a_padded_one(attention, positions, share_weights, head_on_targets):
    model = reft(positions, share_weights, attention=attention)
    packer = Packer(model, head_on_targets, required=True)
    assert_equal_to_padded(model, batch(), packer.forward, head_on_targets)
    assert packer.active and not packer.note


def test_left_padded_rows_pack_the_same_tokens():
    model = reft()
    left = batch(left=True)
    packed = packed_forward(model, model.positions_for, left, True)
    right = packed_forward(model, model.positions_for, batch(), True)
    torch.testing.assert_close(packed[0], right[0])
    assert torch.equal(packed[1], right[1])
    assert_equal_to_padded(model, left, Packer(model, True, required=True).forward, True)


def test_a_packed_step_runs_no_pad_token():
    model = reft()
    seen = []
    model.model.model.embed_tokens.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    Packer(model, True, required=False).forward(model, batch())
    assert seen[-1].shape == (1, sum(LENGTHS))  # the check ran padded first, the step packed


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "switches",
    [{"prefix": True, "layers": True}, {"prefix": True, "layers": False}, {"prefix": False}],
)
@pytest.mark.parametrize("positions", ["l1", "f2+l2"])
def test_the_frozen_state_cache_packs_with_equal_losses_and_gradients(
    attention, switches, positions
):
    model = reft(positions, attention=attention)
    packer = Packer(model, True, required=True)
    cache = PrefixCache(model, 2**30, head_on_targets=True, packer=packer, **switches)
    assert_equal_to_padded(model, batch(), cache.forward, True)
    assert cache.state.on and cache.state.packed and not cache.state.reason
    assert "rows packed" in cache.describe()


@pytest.mark.parametrize("cached", [True, False])
def test_a_batch_split_into_key_groups_equals_the_padded_batch(cached):
    """The Trainer runs a step's rows in groups of bounded keys (split_by_keys): one packed
    forward per group, the losses summed, equal to the whole batch padded."""
    model = reft("f2+l2")
    packer = Packer(model, True, required=True)
    cache = PrefixCache(model, 2**30, head_on_targets=True, packer=packer, prefix=cached)
    run = cache.forward if cached else packer.forward
    keys = dict(enumerate(LENGTHS))
    groups = split_by_keys([list(keys)], keys, budget=45)
    assert groups == [[1, 2], [4, 3, 0]]  # 41 + 4 and 13 + 9 + 6 keys

    def grouped(model, data):
        parts = [run(model, {k: v[rows] for k, v in data.items()}) for rows in groups]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    assert_equal_to_padded(model, batch(), grouped, True)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("switches", [{"prefix": True, "layers": True}, {"prefix": False}])
def test_groups_attending_apart_in_one_call_equal_the_padded_batch(attention, switches):
    """With a key budget, the cache runs the whole batch as one call and cuts only attention:
    each group's queries against its own keys, through the model's own kernel."""
    model = reft("l1", attention=attention)
    packer = Packer(model, True, required=True)
    cache = PrefixCache(model, 2**30, head_on_targets=True, packer=packer, **switches)
    assert cache.groups_rows and cache.key_budget >= 256
    cache.key_budget = 45
    data = batch()
    shapes = []
    inner = ALL_ATTENTION_FUNCTIONS[attention] if attention == "sdpa" else eager_attention_forward

    def spy(module, query, key, *args, **kwargs):
        shapes.append((query.shape[2], key.shape[2]))
        return inner(module, query, key, *args, **kwargs)

    with patch.dict(ALL_ATTENTION_FUNCTIONS._global_mapping, {attention: spy}):
        assert_equal_to_padded(model, data, cache.forward, True)
    assert model.model.config._attn_implementation == attention  # switched back after the call
    # Consecutive rows of at most 45 keys: [0], [1, 2] and [3, 4] hold 6, 41 + 4 and 9 + 13; all
    # rows at once would be 73.
    seen = {keys for _, keys in shapes}
    assert {45, 22} <= seen and sum(LENGTHS) not in seen


def test_contiguous_groups_keep_the_row_order_within_the_budget():
    assert contiguous_groups([6, 41, 4, 9, 13], 45) == [(0, 1), (1, 3), (3, 5)]
    assert contiguous_groups([50, 3, 60], 45) == [(0, 1), (1, 2), (2, 3)]  # longer rows alone
    assert contiguous_groups([5, 5, 5], 45) == [(0, 3)] and contiguous_groups([], 45) == []


def test_the_packed_cache_runs_each_rows_suffix_once_without_pads():
    model = reft("l1", True, layers=(2,))
    cache = PrefixCache(model, 2**30, head_on_targets=True, packer=Packer(model, True, True))
    data = batch()
    cache.forward(model, data)  # the check and the states
    seen = {2: [], 3: []}
    for block in seen:
        cache.blocks[block].register_forward_pre_hook(
            lambda _m, args, kwargs, block=block: seen[block].append(
                (args or (kwargs["hidden_states"],))[0].shape
            ),
            with_kwargs=True,
        )
    cache.forward(model, data)
    # Block 2 is edited at its output only, so the step starts at block 3; l1 leaves the last
    # prompt token and the response: n - p + 1 positions per row.
    suffix = sum(n - p + 1 for n, p in zip(LENGTHS, PROMPTS, strict=True))
    assert seen == {2: [], 3: [(1, suffix, 32)]}


def test_rows_of_equal_length_run_padded_after_a_packed_check():
    """Packed rows attend across rows within a group, which costs more than a few pads: a batch
    with almost no padding runs padded, equal to the plain path; the first batch's check still
    runs the packed path, so a model that cannot pack is found even then."""
    model = reft("l1", True, layers=(2,))
    cache = PrefixCache(model, 2**30, head_on_targets=True, packer=Packer(model, True, True))
    equal = batch(lengths=(9, 9, 9), prompts=(4, 4, 4))
    seen = []
    cache.blocks[3].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args or (kwargs["hidden_states"],))[0].shape),
        with_kwargs=True,
    )
    assert_equal_to_padded(model, equal, cache.forward, True)
    # The plain path runs whole rows (3, 9); the check once packed (1, ...); the two cached
    # passes padded, over each row's last prompt token and response (3, 6).
    assert sum(shape[0] == 1 for shape in seen) == 1
    assert sum(tuple(shape[:2]) == (3, 6) for shape in seen) == 2
    assert cache.state.packed
    seen.clear()
    cache.forward(model, {**batch(), "example_ids": torch.arange(10, 15)})  # mixed: packed
    assert seen[-1][0] == 1  # after the new rows' frozen states are computed (padded)


def test_a_model_that_does_not_match_packed_steps_back_to_padding(monkeypatch):
    # A model that ignores the packed rows' position ids in its mask: every row would attend to the
    # rows before it. Emulated by a mask factory that finds no packed sequences.
    from transformers import masking_utils

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda _ids: None)
    model = reft()
    packer = Packer(model, True, required=False)
    assert_equal_to_padded(model, batch(), packer.forward, True)
    assert not packer.active
    assert packer.note.startswith("packing off, rows are padded: packed rows differ from padded")
    with pytest.raises(ReftError, match=r"train\.packing=true, but packed rows do not match"):
        Packer(model, True, required=True).forward(model, batch())


def test_a_cache_whose_packing_does_not_match_keeps_caching_padded(monkeypatch):
    # A wrong packed mask (every query sees every key) must be caught on the first batch: packing
    # in the cache goes off, the cache itself stays on.
    model = reft("l1", True)
    cache = PrefixCache(model, 2**30, head_on_targets=True, packer=Packer(model, True, False))
    wrong = cache._packed_mask
    monkeypatch.setattr(cache, "_packed_mask", lambda *a: torch.ones_like(wrong(*a)))
    assert_equal_to_padded(model, batch(), cache.forward, True)
    assert cache.state.on and not cache.state.packed
    assert cache.state.reason.startswith("packing off in the cache: the cached path differs")


def test_a_packed_run_is_the_padded_run(llama_dir, data_file, tmp_path):
    from rich.console import Console

    from reft_cli.training.trainer import Trainer
    from tests.training.test_trainer import config, logged, weights

    runs = {}
    for packing in (True, False):
        out = tmp_path / str(packing)
        # The frozen-state cache off, so every step takes the packed plain path.
        off = {"cache_frozen_prefix": False, "cache_frozen_layers": False}
        run = config(llama_dir, data_file, out, dropout=0.0, packing=packing, **off)
        loop = Trainer(run, Console(quiet=True))
        loop.train()
        runs[packing] = (logged(out), weights(out))
        assert loop.prefix_cache is None
        assert (loop.packer is not None and loop.packer.active) == packing
    assert runs[True][0].keys() == runs[False][0].keys()
    for step, loss in runs[False][0].items():
        assert runs[True][0][step] == pytest.approx(loss, abs=1e-5)
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, atol=1e-5, rtol=1e-5)


def test_packing_true_where_it_cannot_apply_is_a_clear_error(llama_dir, data_file, tmp_path):
    from rich.console import Console

    from reft_cli.config.schema import RunConfig
    from reft_cli.training.trainer import Trainer
    from tests.training.test_trainer import config

    data = config(llama_dir, data_file, tmp_path / "run", packing=True).to_dict()
    data["method"] = "lora"
    with pytest.raises(ReftError, match=r"train\.packing=true packs ReFT training of causal LMs"):
        Trainer(RunConfig.from_dict(data), Console(quiet=True))
    auto = config(llama_dir, data_file, tmp_path / "auto").to_dict() | {"method": "lora"}
    assert Trainer(RunConfig.from_dict(auto), Console(quiet=True)).packer is None
