"""Regrouping a step's rows by length: the same rows, the same micro-batch sizes, less padding."""

import itertools
import random

from reft_cli.training.step_plan import group_by_length, plan_epoch, split_by_keys


def padded(micro, lengths):
    return sum(len(m) * max(lengths[r] for r in m) for m in micro if m)


def test_rows_are_regrouped_longest_first_into_the_planned_sizes():
    rng = random.Random(0)
    lengths = {r: rng.randint(3, 60) for r in range(23)}
    for step in plan_epoch(23, 4, 3, seed=1, epoch=0).steps:
        grouped = group_by_length(step, lengths)
        assert sorted(r for m in grouped for r in m) == sorted(r for m in step for r in m)
        assert sorted(map(len, grouped)) == sorted(len(m) for m in step if m)
        for longer, shorter in itertools.pairwise(grouped):
            assert min(lengths[r] for r in longer) >= max(lengths[r] for r in shorter)
        assert padded(grouped, lengths) <= padded(step, lengths)
    alternating = {r: 9 if r in (0, 2, 5, 7) else 2 for r in range(8)}
    grouped = group_by_length([[0, 1, 2, 3], [4, 5, 6, 7]], alternating)
    assert padded(grouped, alternating) == 4 * 9 + 4 * 2  # from 8 * 9


def test_one_micro_batch_keeps_its_order():
    assert group_by_length([[3, 1, 2]], {1: 5, 2: 9, 3: 1}) == [[3, 1, 2]]


def test_each_process_regroups_only_its_own_rows():
    lengths = {r: (r * 7) % 11 for r in range(16)}
    plan = plan_epoch(16, 8, 2, seed=0, epoch=0)
    for rank in range(2):
        shard = plan.shard(0, rank, 2)
        mine = sorted(r for m in shard for r in m)
        assert sorted(r for m in group_by_length(shard, lengths) for r in m) == mine


def test_rows_split_into_groups_within_the_key_budget_a_longer_row_alone():
    keys = {0: 50, 1: 300, 2: 120, 3: 200, 4: 30, 5: 90}
    groups = split_by_keys([[0, 1, 2], [3, 4, 5]], keys, budget=250)
    assert sorted(r for g in groups for r in g) == list(range(6))  # every row once
    assert groups == [[1], [2, 0], [3, 4], [5]]  # longest first, into the first group with room
    assert all(sum(keys[r] for r in g) <= 250 for g in groups if len(g) > 1)
    assert split_by_keys([[0, 1, 2]], keys, budget=0) == [[0, 1, 2]]  # no budget: left whole
