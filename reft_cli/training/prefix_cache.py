"""Frozen-state caching: compute, per example, only what depends on the interventions.

The base model is frozen and causal, so two parts of every training step are the same each epoch:
- the prefix: positions before a row's first intervened position see no edit at any layer, so their
  keys and values never change;
- the lower layers: below the lowest intervened layer no position sees an edit, so the input to that
  layer never changes; where that layer is edited at its output only, its output never changes
  either (the edit is applied after it).
The first time an example is seen, the frozen model computes them once: the prefix's keys and values
from the first block a step runs up, and that block's input over the rest of the row. They are kept
within budget (frozen_store.py). A step then runs only the blocks from there up (applying the lowest
layer's output edits to the cached input when that layer itself is skipped), only over the rest of
each row, attending to the cached prefix through the KV cache; the backward pass ends
there too. The first batch is also run the plain way and compared; where a model's forward cannot
be cut like this, caching steps back (first packing, then the layers, then the prefix) and says
why. With packing, the rows' suffixes run as one sequence and their prefixes as one KV cache, with a
4D mask that lets each suffix see its own prefix and its own earlier tokens only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache

from reft_cli.data.examples import IGNORE_INDEX
from reft_cli.engine.architecture import find_block_stack
from reft_cli.engine.positions import Positions
from reft_cli.engine.reft_model import ReftModel
from reft_cli.training.frozen_store import FrozenStore
from reft_cli.training.grouped_attention import grouped, plan
from reft_cli.training.loss import (
    cache_argument,
    check_selected,
    forward,
    next_token_targets,
    takes_logits_to_keep,
)
from reft_cli.training.packing import Packer, exclusive_cumsum, flat, key_budget, relative_error

# The attention implementations that take a custom 4D mask, and the mask type each wants.
_MASKED_ATTENTION = {"sdpa", "eager"}
# A batch whose padded suffixes would be at most this share pads runs padded: packed rows attend
# across rows within a group, which costs more than so few pads (equal lengths: 0.87-0.92x).
MIN_PADDING = 0.1


class _Reached(Exception):
    """Stops a frozen forward at the first block that needs recomputing, carrying its input."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.hidden = hidden


@dataclass(frozen=True)
class CacheState:
    """What the frozen-state cache does now, for logs and tests: whether it is on at all, which of
    its two parts are on, and why it stepped back (or a part is off), if it did."""

    on: bool  # False: every step runs the plain path
    prefix: bool  # the frozen prefix's keys and values are cached
    layers: bool  # the input to the lowest intervened layer is cached (it is above layer 0)
    reason: str  # why caching stepped back or a part is off; "" when nothing was turned off
    packed: bool = False  # the rows run as one sequence without pad tokens


class PrefixCache:
    """Per-example frozen states (prefix keys and values, lowest-layer input) and the forward pass
    that uses them; the losses and gradients equal the plain path's."""

    def __init__(
        self,
        model: ReftModel,
        budget_bytes: int,
        *,
        prefix: bool = True,
        layers: bool = True,
        head_on_targets: bool = False,
        disk_bytes: int = 0,
        disk_dir: Path | None = None,
        packer: Packer | None = None,
    ) -> None:
        self.model = model
        self.packer = packer  # packs the plain path too, when caching steps back
        attention = getattr(model.model.config, "_attn_implementation", None)
        self.pack = packer is not None and attention in _MASKED_ATTENTION
        # Packed rows attend in groups of at most this many keys (grouped_attention.py).
        self.key_budget = key_budget(model) if self.pack else 0
        self.store = FrozenStore(budget_bytes, disk_bytes, disk_dir)
        self.cache_prefix = prefix
        path, self.blocks = find_block_stack(model.model)
        parent, _, self._stack_name = path.rpartition(".")
        self._stack_parent = model.model.get_submodule(parent)
        sites = model.reft_config.interventions
        lowest = min((site.layer for site in sites), default=0)
        # A block edited only at its output is itself frozen: its output comes from the cache
        # too, and a step applies the block's edits to that (the last block is always run).
        frozen = bool(sites) and lowest + 1 < len(self.blocks)
        frozen = frozen and all(s.component == "block_output" for s in sites if s.layer == lowest)
        self.start = lowest + frozen if layers else 0  # the first block a step runs
        self.fed_site = (lowest, "block_output") if layers and frozen else None
        self.head_on_targets = head_on_targets and takes_logits_to_keep(model.model)
        self.cache_name = cache_argument(model.model)
        self.hits = 0  # rows whose frozen states came from the cache
        self.misses = 0  # rows whose frozen states were computed
        self.note = ""  # why caching stepped back, if it did
        self.active = True
        self.checked = False
        if prefix and any(getattr(block, "gradient_checkpointing", False) for block in self.blocks):
            self.cache_prefix = False  # transformers drops a KV cache under checkpointing
            self.note = "prefix caching off under gradient checkpointing"
        dropout = _dropout(model.model)
        if dropout:
            self.active = False
            self.note = f"frozen-state cache off: the base model has dropout ({dropout})"

    @property
    def state(self) -> CacheState:
        """Whether the cache is on, which parts, and the reason it stepped back, if it did."""
        return CacheState(
            on=self.active,
            prefix=self.active and self.cache_prefix,
            layers=self.active and self.start > 0,
            reason=self.note,
            packed=self.active and self.pack,
        )

    @property
    def groups_rows(self) -> bool:
        """Whether a micro-batch's rows attend in groups within one packed call (consecutive rows
        of at most key_budget keys), so a step hands its rows over in one micro-batch."""
        return self.active and self.pack and self.key_budget > 0

    @property
    def _attention(self) -> str:
        return self.model.model.config._attn_implementation

    @staticmethod
    def applies(model: ReftModel, task_type: str) -> bool:
        """Only causal decoders: there, earlier positions never attend to later ones."""
        config = model.model.config
        return task_type == "causal_lm" and not getattr(config, "is_encoder_decoder", False)

    # ----------------------------------------------------------------------------- the step
    def forward(self, wrapped: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits, targets) aligned as steps.forward gives them, computing only what can change."""
        if self.active and not self.checked:
            self._check(batch)
        if not self.active:
            if self.packer is not None:
                return self.packer.forward(wrapped, batch)
            return forward(wrapped, batch, "causal_lm", self.head_on_targets)
        return self._forward(wrapped, batch)

    def prefix_lengths(self, batch: dict[str, Tensor]) -> Tensor:
        """Each row's frozen prefix length: up to its first intervened position, and never past the
        second-last prompt token, because the last one predicts the first response token."""
        positions = self.model.positions_for(batch["prompt_lengths"], batch["attention_mask"])
        return self._prefix(batch, positions)

    def _prefix(self, batch: dict[str, Tensor], positions: dict[str, Positions]) -> Tensor:
        if not self.cache_prefix:
            return torch.zeros_like(batch["prompt_lengths"])
        big = batch["input_ids"].shape[1]
        firsts = [torch.where(p.mask, p.index, big).min(dim=1).values for p in positions.values()]
        last_prompt = (batch["prompt_lengths"] - 1).clamp(min=0)
        return torch.minimum(torch.stack(firsts).min(dim=0).values, last_prompt)

    def step_lengths(self, prompt_lengths: Tensor, lengths: Tensor) -> Tensor:
        """How many positions a step runs for rows of these prompt and total lengths (unpadded)."""
        mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
        batch = {"prompt_lengths": prompt_lengths, "attention_mask": mask, "input_ids": mask}
        return lengths - self.prefix_lengths(batch) if self.active else lengths

    def _forward(
        self, wrapped: nn.Module, batch: dict[str, Tensor], checking: bool = False
    ) -> tuple[Tensor, Tensor]:
        found = self.model.positions_for(batch["prompt_lengths"], batch["attention_mask"])
        prefix = self._prefix(batch, found)
        lengths = batch["attention_mask"].sum(dim=1)
        # The step's one host read: every row's prefix and length at once. They size the suffix
        # and the cache tensors, and slice the per-example states of rows seen for the first time.
        layout = _Layout(*torch.stack([prefix, lengths]).tolist())
        entries = self._entries(batch, prefix, layout)
        ids, mask, cols, valid = _suffix(batch, prefix, lengths, layout.width, layout.span)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
        targets = torch.where(valid, next_token_targets(batch["labels"])[rows, cols], IGNORE_INDEX)
        positions = {
            group: torch.where(p.mask, p.index - prefix[:, None], -1) for group, p in found.items()
        }
        # Packed: each row's real suffix tokens, end to end (always when checking the path).
        if self.pack and (checking or layout.padding > MIN_PADDING):
            offsets = exclusive_cumsum(lengths - prefix)
            positions = {
                group: torch.where(index >= 0, index + offsets[:, None], -1).reshape(1, -1)
                for group, index in positions.items()
            }
            ids, cols, targets = ids[valid][None], cols[valid][None], targets[valid][None]
            mask = self._packed_mask(layout, ids.device)
            groups = plan(mask, layout.prefix, layout.suffix, self.key_budget, self._attention)
            past = self._packed_past(entries, self.start)
            feed = torch.cat([e["hidden"] for e in entries])[None] if self.start else None
        else:
            groups = None
            past = self._past(entries, layout.width, self.start)
            feed = _stack_hidden(entries) if self.start else None
        kwargs = {}
        if self.head_on_targets:
            keep = targets != IGNORE_INDEX
            kwargs["logits_to_keep"] = keep
            targets = targets[keep]
        with self._from_start(feed), grouped(self.model.model, groups):
            out = wrapped(
                ids,
                mask,
                intervention_positions=positions,
                position_ids=cols,
                use_cache=False,
                **{self.cache_name: past},
                **kwargs,
            )
        check_selected(out.logits, targets)
        return out.logits, targets

    @contextmanager
    def _from_start(self, feed: Tensor | None) -> Iterator[None]:
        """Inside: the base model runs blocks `start`.. only, and block `start` gets `feed`, with
        the skipped block's output edits applied when the cache skips the lowest intervened block.

        The hook sits outside the block's own forward, which is what gradient checkpointing
        recomputes, so a recompute after this block has exited still sees `feed`.
        """
        if feed is None:
            yield
            return

        def substitute(_module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            hidden = feed if self.fed_site is None else self.model.edit_site(self.fed_site, feed)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        stack = getattr(self._stack_parent, self._stack_name)
        handle = stack[self.start].register_forward_pre_hook(
            substitute, with_kwargs=True, prepend=True
        )
        setattr(self._stack_parent, self._stack_name, stack[self.start :])
        try:
            yield
        finally:
            setattr(self._stack_parent, self._stack_name, stack)
            handle.remove()

    # ----------------------------------------------------------------------------- the states
    # An example's states: "key" and "value", (prefix, layers from `start`, heads, head_dim), when
    # it has a prefix; "hidden", (suffix, hidden size), the input to block `start`, when start > 0.
    # Sequence first, so that one pad_sequence call pads a whole batch of them.
    def _entries(
        self, batch: dict[str, Tensor], prefix: Tensor, layout: _Layout
    ) -> list[dict[str, Tensor]]:
        """Each row's frozen states, from the cache or computed now (and kept within budget)."""
        if not self.start and not layout.width:  # no row has a frozen prefix or lower layers
            return [{} for _ in layout.prefix]
        # The trainer keeps example ids on the host; a batch that has them on a device costs one
        # read here, for the whole batch.
        ids = batch["example_ids"].tolist()
        entries = [self.store.get(i) for i in ids]
        missing = [r for r, e in enumerate(entries) if e is None]
        self.hits += len(ids) - len(missing)  # only non-empty states are ever stored
        if missing:
            fresh = self._compute(batch, prefix, missing, layout)
            for r, entry in zip(missing, fresh, strict=True):
                entries[r] = entry
                if entry:  # a row with neither a prefix nor lower layers has nothing to keep
                    self.misses += 1
                    self.store.put(ids[r], entry)
        return entries

    @torch.no_grad()
    def _compute(
        self, batch: dict[str, Tensor], prefix: Tensor, rows: list[int], layout: _Layout
    ) -> list[dict[str, Tensor]]:
        """The frozen states of `rows`: the prefix through every layer, then the rest of each row
        through the blocks below `start`; what a step reads is copied out, the rest dropped."""
        base = self.model.model
        sub = {k: batch[k][rows] for k in ("input_ids", "attention_mask")}
        pre, lengths = prefix[rows], batch["attention_mask"].sum(dim=1)[rows]
        part = layout.select(rows)
        entries: list[dict[str, Tensor]] = [{} for _ in rows]
        with self.model.disable_adapter():
            with_prefix = [j for j, n in enumerate(part.prefix) if n > 0]
            if with_prefix:
                ids = sub["input_ids"][with_prefix, : part.width]
                mask = torch.arange(part.width, device=ids.device)[None] < pre[with_prefix, None]
                extra = {"logits_to_keep": 1} if takes_logits_to_keep(base) else {}
                kv = base(input_ids=ids, attention_mask=mask.long(), use_cache=True, **extra)
                layers = kv.past_key_values.layers
                # (rows, width, layers, heads, head_dim): each row's prefix is a leading slice.
                keys = torch.stack([layer.keys for layer in layers]).permute(1, 3, 0, 2, 4)
                values = torch.stack([layer.values for layer in layers]).permute(1, 3, 0, 2, 4)
                for k, j in enumerate(with_prefix):
                    entries[j]["key"] = keys[k, : part.prefix[j]]
                    entries[j]["value"] = values[k, : part.prefix[j]]
            if self.start:
                ids, mask, cols, _ = _suffix(sub, pre, lengths, part.width, part.span)
                past = self._past(entries, part.width, 0)
                handle = self.blocks[self.start].register_forward_pre_hook(
                    _stop, with_kwargs=True, prepend=True
                )
                try:
                    base(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=cols,
                        **{self.cache_name: past},
                    )
                    raise RuntimeError(f"block {self.start} never ran")
                except _Reached as reached:
                    hidden = reached.hidden
                finally:
                    handle.remove()
                for j, n in enumerate(part.suffix):
                    entries[j]["hidden"] = hidden[j, :n]
        # Keep the layers a step reads; clone so the batch-wide tensors are not held alive.
        return [
            {name: (t if name == "hidden" else t[:, self.start :]).clone() for name, t in e.items()}
            for e in entries
        ]

    def _past(
        self, entries: list[dict[str, Tensor]], width: int, first: int
    ) -> DynamicCache | None:
        """The rows' prefix keys and values, left-padded to the widest prefix (pads are masked).

        The entries hold layers from `first` on; layers below never run, so they hold zeros. They
        are filled anyway because the attention mask is sized from the cache's first layer.
        """
        if width == 0:
            return None
        template = next(e["key"] for e in entries if "key" in e)
        empty = template.new_zeros((0, *template.shape[1:]))
        # (layers, rows, heads, width, head_dim), one pad for the whole batch.
        keys, values = (
            pad_sequence(
                [e.get(kind, empty) for e in entries], batch_first=True, padding_side="left"
            ).permute(2, 0, 3, 1, 4)
            for kind in ("key", "value")
        )
        zeros = keys[0].new_zeros(()).expand_as(keys[0])
        layers = [(zeros, zeros)] * first + list(zip(keys.unbind(0), values.unbind(0), strict=True))
        return DynamicCache(layers, config=self.model.model.config)

    def _packed_past(self, entries: list[dict[str, Tensor]], first: int) -> DynamicCache | None:
        """The rows' prefix keys and values end to end, as one sequence of one row."""
        keyed = [e for e in entries if "key" in e]
        if not keyed:
            return None
        # (prefix tokens, layers, heads, head_dim) -> (layers, 1, heads, prefix tokens, head_dim)
        keys, values = (
            torch.cat([e[kind] for e in keyed]).permute(1, 2, 0, 3)[:, None]
            for kind in ("key", "value")
        )
        zeros = keys[0].new_zeros(()).expand_as(keys[0])
        layers = [(zeros, zeros)] * first + list(zip(keys.unbind(0), values.unbind(0), strict=True))
        return DynamicCache(layers, config=self.model.model.config)

    def _packed_mask(self, layout: _Layout, device: torch.device) -> Tensor:
        """(1, 1, suffix tokens, prefix + suffix tokens): each row's suffix sees its own prefix and
        its own earlier suffix tokens; boolean for sdpa, additive for eager attention."""
        rows = torch.arange(len(layout.prefix), device=device)
        query = rows.repeat_interleave(torch.tensor(layout.suffix, device=device))
        prefix = rows.repeat_interleave(torch.tensor(layout.prefix, device=device))
        n = query.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        allowed = torch.cat(
            [query[:, None] == prefix[None], (query[:, None] == query[None]) & causal], dim=1
        )[None, None]
        if self._attention == "sdpa":
            return allowed
        dtype = next(self.model.model.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    # ----------------------------------------------------------------------------- the check
    def _check(self, batch: dict[str, Tensor]) -> None:
        """Run the first batch both ways in eval mode; step back until they agree."""
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                want = flat(*forward(self.model, batch, "causal_lm", self.head_on_targets))
                while self.active:
                    error = self._error(batch, want[0])
                    if error is None:
                        break
                    self._step_back(f"the cached path differs from the plain one ({error})")
        finally:
            self.model.train(training)
        self.checked = True

    def _error(self, batch: dict[str, Tensor], want: Tensor) -> str | None:
        try:
            got, _ = flat(*self._forward(self.model, batch, checking=True))
        except Exception as exc:  # any model whose forward cannot be cut this way
            return f"{type(exc).__name__}: {exc}"
        return relative_error(got, want)

    def _step_back(self, reason: str) -> None:
        """Stop packing, else stop caching the layers, else stop caching at all."""
        if self.pack:  # the states are the same padded or packed: keep them
            self.pack = False
            self.note = f"packing off in the cache: {reason}"
            return
        self.store.clear()
        self.hits = self.misses = 0
        if self.start:
            self.start, self.fed_site = 0, None
            self.note = f"layer caching off: {reason}"
        else:
            self.active = False
            self.note = f"frozen-state cache off: {reason}"

    def describe(self) -> str:
        """One line for the log: what is cached, where, and what it saved."""
        if not self.active:
            return self.note
        kept = []
        if self.start:
            kept.append(f"the input to layer {self.start}")
        if self.cache_prefix:
            kept.append("the frozen prefix's keys and values")
        line = (
            f"frozen-state cache ({' and '.join(kept) or 'nothing to keep'}): "
            f"{len(self.store)} examples, "
            f"{self.store.describe()}; {self.hits} rows read it, {self.misses} computed it"
            + ("; rows packed" if self.pack else "")
        )
        return f"{line}; {self.note}" if self.note else line


@dataclass(frozen=True)
class _Layout:
    """A batch's prefix and total lengths per row, read to the host once per step."""

    prefix: list[int]
    lengths: list[int]

    @property
    def suffix(self) -> list[int]:
        return [n - p for p, n in zip(self.prefix, self.lengths, strict=True)]

    @property
    def width(self) -> int:
        return max(self.prefix, default=0)

    @property
    def span(self) -> int:
        return max(self.suffix, default=0)

    @property
    def padding(self) -> float:
        """The share of a padded step's suffix positions that would be pads."""
        return 1 - sum(self.suffix) / max(len(self.suffix) * self.span, 1)

    def select(self, rows: list[int]) -> _Layout:
        return _Layout([self.prefix[r] for r in rows], [self.lengths[r] for r in rows])


def _suffix(
    batch: dict[str, Tensor], prefix: Tensor, lengths: Tensor, width: int, span: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(input ids, attention mask over prefix + suffix, positions, valid) of each row's suffix;
    `width` and `span` are the widest prefix and suffix."""
    rows = torch.arange(lengths.shape[0], device=prefix.device)[:, None]
    cols = prefix[:, None] + torch.arange(span, device=prefix.device)
    valid = cols < lengths[:, None]
    cols = torch.where(valid, cols, 0)
    ids = torch.where(valid, batch["input_ids"][rows, cols], 0)
    prefix_mask = torch.arange(width, device=prefix.device)[None] >= (width - prefix)[:, None]
    return ids, torch.cat([prefix_mask, valid], dim=1).long(), cols, valid


def _stack_hidden(entries: list[dict[str, Tensor]]) -> Tensor:
    """(B, span, hidden): each row's cached input to block `start`, zero-padded on the right."""
    return pad_sequence([e["hidden"] for e in entries], batch_first=True)


def _stop(_module: nn.Module, args: tuple, kwargs: dict) -> None:
    raise _Reached(args[0] if args else kwargs["hidden_states"])


def _dropout(base: nn.Module) -> str:
    """The base model's dropout rates, if any: under dropout its states differ every step."""
    rates = {m.p for m in base.modules() if isinstance(m, nn.Dropout) and m.p > 0}
    settings = vars(base.config.get_text_config()).items()
    rates |= {  # functional dropout inside attention or blocks (a classifier's is not run here)
        v
        for k, v in settings
        if "dropout" in k and "classifier" not in k and isinstance(v, float) and v > 0
    }
    return ", ".join(f"p={p:g}" for p in sorted(rates))
