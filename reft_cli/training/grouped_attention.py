"""Attention for packed rows in groups: each group's queries meet only its own keys.

A packed sequence attends through one dense mask, so every row's queries are multiplied by every
other row's keys and the products masked out: for short rows beside a long one that is most of the
attention's work. Running each group of rows as its own model call avoids it, but multiplies the
calls and shrinks every weight's matrix product. Here the whole sequence runs as one call (the
weights see every token at once) and only attention is cut: for each group, its queries against its
own prefix keys and its own suffix keys, with its slice of the dense mask. Masked-out products are
exactly zero after the softmax, so the outputs equal the dense mask's.

The split is registered with transformers as an attention implementation and switched on only
inside `grouped`, for the configs of one model; the kernel per group is the model's own (sdpa or
eager).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "reft_grouped"


@dataclass(frozen=True)
class Group:
    """One group's slices: its queries, its prefix keys (in the cache) and its suffix keys."""

    queries: slice
    prefix: slice
    suffix: slice  # among all keys, so offset by the whole prefix
    mask: Tensor  # (1, 1, its queries, its keys)


@dataclass(frozen=True)
class Plan:
    groups: list[Group]
    inner: str  # the model's own implementation, run per group


_PLAN: ContextVar[Plan | None] = ContextVar("reft_grouped_plan", default=None)


def contiguous_groups(keys: list[int], budget: int) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive rows, each holding at most `budget` keys (a longer row
    alone): rows keep their order, so a step draws the same dropout masks as the plain path."""
    ranges, start, held = [], 0, 0
    for row, n in enumerate(keys):
        if row > start and held + n > budget:
            ranges.append((start, row))
            start, held = row, 0
        held += n
    if keys:
        ranges.append((start, len(keys)))
    return ranges


def plan(
    mask: Tensor, prefix: list[int], suffix: list[int], budget: int, inner: str
) -> Plan | None:
    """The groups of a packed step whose dense mask is `mask` (1, 1, suffix tokens, prefix +
    suffix tokens) over rows with these prefix and suffix lengths; None when one group holds all."""
    keys = [p + s for p, s in zip(prefix, suffix, strict=True)]
    ranges = contiguous_groups(keys, budget) if budget > 0 else [(0, len(keys))]
    if len(ranges) < 2:
        return None
    prefix_at = [0, *accumulate(prefix)]
    suffix_at = [0, *accumulate(suffix)]
    total = prefix_at[-1]
    groups = []
    for start, end in ranges:
        queries = slice(suffix_at[start], suffix_at[end])
        keys_before = slice(prefix_at[start], prefix_at[end])
        keys_after = slice(total + suffix_at[start], total + suffix_at[end])
        rows = mask[:, :, queries]
        groups.append(
            Group(
                queries,
                keys_before,
                keys_after,
                torch.cat([rows[..., keys_before], rows[..., keys_after]], dim=-1),
            )
        )
    return Plan(groups, inner)


def _grouped_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs,
) -> tuple[Tensor, None]:
    """The model's attention run group by group; outputs (batch, queries, heads, head_dim)."""
    current = _PLAN.get()
    inner = _kernel(module, current.inner if current else "sdpa")
    if current is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    for group in current.groups:
        keys, values = (
            torch.cat([t[:, :, group.prefix], t[:, :, group.suffix]], dim=2) for t in (key, value)
        )
        out, _ = inner(module, query[:, :, group.queries], keys, values, group.mask, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def _kernel(module: nn.Module, name: str) -> Callable:
    """The attention function `name` as `module` would run it: eager is each model file's own."""
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if name != "eager" or eager is None:
        raise ValueError(f"no attention function {name!r} for {type(module).__name__}")
    return eager


AttentionInterface.register(NAME, _grouped_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def _configs(model: nn.Module) -> list:
    """Every config object the model's modules read their attention implementation from."""
    found = {id(model.config): model.config}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            found.setdefault(id(config), config)
    return list(found.values())


@contextmanager
def grouped(model: nn.Module, current: Plan | None) -> Iterator[None]:
    """Inside: `model`'s attention runs `current`'s groups apart (nothing changes for None)."""
    if current is None:
        yield
        return
    configs = _configs(model)
    before = [c._attn_implementation for c in configs]
    token = _PLAN.set(current)
    for config in configs:
        config._attn_implementation = NAME
    try:
        yield
    finally:
        for config, name in zip(configs, before, strict=True):
            config._attn_implementation = name
        _PLAN.reset(token)
