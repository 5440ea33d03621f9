"""Which examples go into which optimizer step, on which process.

The order is a pure function of (seed, epoch), so a resumed run replays exactly the batches an
uninterrupted run would have seen, and every process agrees on it without communication. A step
holds `gradient_accumulation_steps` global micro-batches; each process takes every world_size-th row
of each one, so N processes see the same global batches as one process does. Within a step, a
process may regroup its rows by length (the loss is normalized over the whole step, so gradients
do not depend on how its rows are split into micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepPlan:
    """The example indices of every optimizer step of one epoch, as global micro-batches."""

    steps: list[list[list[int]]]

    def shard(self, step: int, rank: int, world_size: int) -> list[list[int]]:
        """This process's rows of each micro-batch of `step` (possibly empty for tiny batches)."""
        return [micro[rank::world_size] for micro in self.steps[step]]


def plan_epoch(
    num_examples: int,
    global_batch_size: int,
    accumulation_steps: int,
    seed: int,
    epoch: int,
) -> StepPlan:
    """Shuffle with a generator seeded by (seed, epoch); a last partial step is kept, not dropped."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    micro = [order[i : i + global_batch_size] for i in range(0, num_examples, global_batch_size)]
    steps = [micro[i : i + accumulation_steps] for i in range(0, len(micro), accumulation_steps)]
    return StepPlan(steps)


def group_by_length(micro: list[list[int]], lengths: dict[int, int]) -> list[list[int]]:
    """The same rows cut into micro-batches of the same sizes, longest rows together, so that
    rows of similar length share their padding. One micro-batch is left as it is."""
    if sum(1 for m in micro if m) < 2:
        return micro
    rows = sorted((r for m in micro for r in m), key=lambda r: -lengths[r])
    grouped, start = [], 0
    for size in sorted((len(m) for m in micro if m), reverse=True):
        grouped.append(rows[start : start + size])
        start += size
    return grouped


def split_by_keys(micro: list[list[int]], keys: dict[int, int], budget: int) -> list[list[int]]:
    """Each micro-batch cut into groups whose rows hold at most `budget` keys together (a longer
    row alone), longest first into the first group with room: each group runs as one packed
    sequence, whose dense attention grows with its keys squared. No budget leaves them whole."""
    if budget <= 0:
        return micro
    grouped: list[list[int]] = []
    for rows in micro:
        groups: list[list[int]] = []
        room: list[int] = []
        for row in sorted(rows, key=lambda r: -keys[r]):
            fits = next((i for i, left in enumerate(room) if keys[row] <= left), None)
            if fits is None:
                groups.append([row])
                room.append(budget - keys[row])
            else:
                groups[fits].append(row)
                room[fits] -= keys[row]
        grouped += groups
    return grouped


def steps_per_epoch(num_examples: int, global_batch_size: int, accumulation_steps: int) -> int:
    micro = -(-num_examples // global_batch_size)
    return -(-micro // accumulation_steps)
