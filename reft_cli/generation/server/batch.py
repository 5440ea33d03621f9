"""The rows decoding together: one left-padded KV cache, and each row's mask, position and limits.

New rows are prefilled apart (each with its own adapter's edits) and joined: the shorter cache is
padded on the left with masked-out columns, then the two are concatenated along the batch. Keys
are cached after the rotary embedding, so a row's past keeps its own positions whatever padding
sits before it; each step passes every row's own next position. Finished rows are dropped from
the cache, and columns no remaining row uses are trimmed from the left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from reft_cli.generation.server.sampler import Draws, Penalties


@dataclass
class Batch:
    """`rows[i]` owns row i of every tensor; `cache` holds (B, heads, width, dim) per layer."""

    rows: list[Any]
    cache: DynamicCache
    mask: Tensor  # (B, width) long: 1 where a row has a token
    positions: Tensor  # (B,) the position of each row's next input token
    last: Tensor  # (B,) each row's latest token, the next step's input
    counts: Tensor  # (B,) tokens generated so far
    limits: Tensor  # (B,) max_tokens
    draws: Draws
    logprobs: int = 0  # the most top log-probabilities any row wants (0: none computed)
    penalties: Penalties | None = None  # None: no row has a penalty

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def joinable(self) -> bool:
        """Plain growing layers only: sliding-window or recurrent states cannot be padded."""
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def keep(self, index: Tensor, rows: list[Any], draws: Draws) -> None:
        """Keep the rows at `index` (with their new settings), then trim unused left columns."""
        self.rows = rows
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.last = (
            self.mask[index],
            self.positions[index],
            self.last[index],
        )
        self.counts, self.limits = self.counts[index], self.limits[index]
        self.draws = draws
        self.logprobs = max((r.logprobs for r in rows), default=0)
        if self.penalties is not None:
            self.penalties = self.penalties.select(index)
        start = int(self.mask.any(dim=0).int().argmax())
        if start:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    def join(self, other: Batch, draws: Draws) -> None:
        """Append `other`'s rows, padding the narrower cache on the left."""
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, width), _pad(theirs.keys, width)])
            mine.values = torch.cat([_pad(mine.values, width), _pad(theirs.values, width)])
        self.mask = torch.cat([_pad(self.mask, width), _pad(other.mask, width)])
        self.penalties = Penalties.join(self.penalties, len(self), other.penalties, len(other))
        self.rows = self.rows + other.rows
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.counts = torch.cat([self.counts, other.counts])
        self.limits = torch.cat([self.limits, other.limits])
        self.draws = draws
        self.logprobs = max(self.logprobs, other.logprobs)


def _pad(tensor: Tensor, width: int) -> Tensor:
    """Left-pad the sequence axis (the last for a mask, the third for keys and values) with 0."""
    axis = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[axis]
    if not missing:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - axis) + [missing, 0]
    return F.pad(tensor, pad)
