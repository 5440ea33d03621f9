"""Frozen-prefix caching: compute, per example, only what depends on the interventions.

In a causal model every position before a row's first intervened position sees no edit at any
layer, so its keys and values are the same every epoch. The first time an example is seen, the
frozen base model runs over that prefix once and its per-layer keys and values are kept (in RAM,
up to a budget). A training step then runs the model only over the rest of each row — the
intervened prompt tokens and the response — attending to the cached prefix through the KV cache,
so forward and backward touch a few tokens per row instead of the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from reft_cli.model import ReftModel


@dataclass
class _Entry:
    keys: list[Tensor]  # per layer: (kv_heads, prefix, head_dim)
    values: list[Tensor]


class PrefixCache:
    """Per-example keys and values of the frozen prefix, bounded by `budget_bytes`."""

    def __init__(self, model: ReftModel, budget_bytes: int) -> None:
        self.model = model
        self.budget = budget_bytes
        self.used = 0
        self.entries: dict[int, _Entry] = {}
        self.hits = 0  # rows whose prefix came from the cache
        self.misses = 0  # rows whose prefix was computed

    @staticmethod
    def applies(model: ReftModel, task_type: str) -> bool:
        """Only causal decoders: there, earlier positions never attend to later ones."""
        config = model.model.config
        return task_type == "causal_lm" and not getattr(config, "is_encoder_decoder", False)

    def prefix_lengths(self, batch: dict[str, Tensor]) -> Tensor:
        """Each row's frozen prefix length: up to its first intervened position, and never past the
        second-last prompt token, because the last one predicts the first response token."""
        positions = self.model.positions_for(batch["prompt_lengths"], batch["attention_mask"])
        big = batch["input_ids"].shape[1]
        firsts = [torch.where(p.mask, p.index, big).min(dim=1).values for p in positions.values()]
        last_prompt = (batch["prompt_lengths"] - 1).clamp(min=0)
        return torch.minimum(torch.stack(firsts).min(dim=0).values, last_prompt)

    def _entries(self, batch: dict[str, Tensor], prefix: Tensor) -> list[_Entry]:
        """Cached entries for the batch's rows, computing (and storing, within budget) the missing ones."""
        ids = batch["example_ids"].tolist()
        with_prefix = [r for r in range(len(ids)) if int(prefix[r]) > 0]
        missing = [r for r in with_prefix if ids[r] not in self.entries]
        fresh = self._compute(batch, prefix, missing) if missing else {}
        self.misses += len(missing)
        self.hits += len(with_prefix) - len(missing)
        out = []
        for r, example_id in enumerate(ids):
            entry = self.entries.get(example_id) or fresh.get(r)
            if entry is None:  # an empty prefix
                entry = _Entry([], [])
            elif r in fresh and self.used + _size(entry) <= self.budget:
                self.entries[example_id] = entry
                self.used += _size(entry)
            out.append(entry)
        return out

    @torch.no_grad()
    def _compute(
        self, batch: dict[str, Tensor], prefix: Tensor, rows: list[int]
    ) -> dict[int, _Entry]:
        """The base model's keys and values over each row's prefix (rows run one at a time)."""
        fresh = {}
        with self.model.disable_adapter():
            for r in rows:
                ids = batch["input_ids"][r : r + 1, : int(prefix[r])]
                out = self.model.model(input_ids=ids, use_cache=True)
                cache = out.past_key_values
                fresh[r] = _Entry(
                    [layer.keys[0].clone() for layer in cache.layers],
                    [layer.values[0].clone() for layer in cache.layers],
                )
        return fresh

    def forward(self, wrapped: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits over each row's suffix, labels aligned with them) with the prefix from the cache."""
        prefix = self.prefix_lengths(batch)
        entries = self._entries(batch, prefix)
        width = int(prefix.max())
        lengths = batch["attention_mask"].sum(dim=1)
        suffix = lengths - prefix
        span = int(suffix.max())
        rows = torch.arange(batch["input_ids"].shape[0], device=prefix.device)[:, None]
        cols = prefix[:, None] + torch.arange(span, device=prefix.device)
        valid = cols < lengths[:, None]
        cols = torch.where(valid, cols, 0)
        input_ids = torch.where(valid, batch["input_ids"][rows, cols], 0)
        labels = torch.where(valid, batch["labels"][rows, cols], -100)
        # Left-pad each prefix to the widest one; padded slots are masked out.
        prefix_mask = torch.arange(width, device=prefix.device)[None] >= (width - prefix)[:, None]
        attention_mask = torch.cat([prefix_mask, valid], dim=1).long()
        cache = None
        if width > 0:
            template = next(e for e in entries if e.keys)
            layers = [
                (
                    torch.stack([_left_pad(e.keys, template.keys, layer, width) for e in entries]),
                    torch.stack(
                        [_left_pad(e.values, template.values, layer, width) for e in entries]
                    ),
                )
                for layer in range(len(template.keys))
            ]
            cache = DynamicCache(layers, config=self.model.model.config)
        positions = {
            group: torch.where(p.mask, p.index - prefix[:, None], -1)
            for group, p in self.model.positions_for(
                batch["prompt_lengths"], batch["attention_mask"]
            ).items()
        }
        out = wrapped(
            input_ids,
            attention_mask,
            intervention_positions=positions,
            position_ids=cols + 0,
            past_key_values=cache,
            use_cache=False,
        )
        # Every target is predicted from a suffix position: the prefix ends before the last prompt
        # token, so starting the logits at the suffix loses none.
        return out.logits, labels

    def describe(self) -> str:
        """One line for the log: what is cached and what it saved."""
        tokens = sum(e.keys[0].shape[1] for e in self.entries.values() if e.keys)
        return (
            f"frozen-prefix cache: {len(self.entries)} examples, {tokens} prefix tokens, "
            f"{self.used / 2**20:.1f} MiB of {self.budget / 2**20:.0f} MiB; "
            f"{self.hits} rows read their prefix from it, {self.misses} computed it"
        )


def _left_pad(tensors: list[Tensor], template: list[Tensor], layer: int, width: int) -> Tensor:
    """(heads, width, head_dim): the row's prefix after zero slots (masked); all zeros if empty."""
    if not tensors:
        shape = template[layer].shape
        return template[layer].new_zeros(shape[0], width, shape[2])
    t = tensors[layer]
    pad = width - t.shape[1]
    return torch.nn.functional.pad(t, (0, 0, pad, 0)) if pad else t


def _size(entry: _Entry) -> int:
    return sum(t.numel() * t.element_size() for t in entry.keys + entry.values)
