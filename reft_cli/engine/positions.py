"""Which prompt tokens an intervention edits: the `positions:` language and per-row index tensors.

`f7+l7` selects the first 7 and the last 7 prompt tokens; each side is capped at ⌊L/2⌋ for a prompt
of L tokens so the two sides never overlap (pyreft parity). Indices are computed from each row's real
prompt length and its attention mask, so left- and right-padded batches select the same tokens as the
rows one at a time. Slots that a short prompt cannot fill are masked, never written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from reft_cli.errors import ReftError

_GRAMMAR = re.compile(r"(?:f(?P<first>\d+))?(?P<plus>\+)?(?:l(?P<last>\d+))?")


@dataclass(frozen=True)
class PositionSpec:
    """A parsed `positions:` string: how many prompt tokens to take from the front and the back."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PositionSpec:
        match = _GRAMMAR.fullmatch(text.strip()) if isinstance(text, str) else None
        ok = (
            match is not None
            and (match["first"] is not None or match["last"] is not None)
            and (match["plus"] is not None)
            == (match["first"] is not None and match["last"] is not None)
        )
        if not ok:
            raise ReftError(
                f"invalid positions {text!r}: write f<N> (first N prompt tokens), l<N> (last N), "
                "or f<N>+l<M>, for example f7+l7, f1 or l1"
            )
        spec = cls(int(match["first"] or 0), int(match["last"] or 0))
        if spec.first == spec.last == 0:
            raise ReftError(f"positions {text!r} selects no tokens; use at least f1 or l1")
        return spec

    def groups(self, share_weights: bool) -> tuple[str, ...]:
        """Names of the intervention groups per site: one tied group, or one per non-empty side."""
        if share_weights:
            return ("all",)
        return tuple(name for name, n in (("first", self.first), ("last", self.last)) if n > 0)

    def __str__(self) -> str:
        parts = [f"f{self.first}"] if self.first else []
        parts += [f"l{self.last}"] if self.last else []
        return "+".join(parts)


@dataclass(frozen=True)
class Positions:
    """Token indices (B, K) into the sequence and a mask (B, K) of the slots that are real."""

    index: Tensor
    mask: Tensor

    @classmethod
    def from_explicit(cls, index: Tensor) -> Positions:
        """Explicit indices, with negative entries meaning 'no position in this slot'."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() == 1:
            index = index[None]
        mask = index >= 0
        return cls(index.clamp(min=0), mask)

    def expand(self, repeats: int) -> Positions:
        """Each row repeated `repeats` times in place (for beams and several returned sequences)."""
        return Positions(
            self.index.repeat_interleave(repeats, dim=0),
            self.mask.repeat_interleave(repeats, dim=0),
        )


def compute_positions(
    spec: PositionSpec,
    share_weights: bool,
    prompt_lengths: Tensor,
    attention_mask: Tensor,
) -> dict[str, Positions]:
    """Per-group index tensors for a batch; prompts start at each row's first attended token."""
    lengths = torch.as_tensor(prompt_lengths, device=attention_mask.device).long()
    if lengths.dim() != 1 or lengths.numel() != attention_mask.shape[0]:
        raise ReftError(
            f"prompt_lengths must hold one length per row ({attention_mask.shape[0]}), "
            f"got shape {tuple(lengths.shape)}"
        )
    real = attention_mask.long().sum(dim=1)
    if bool((lengths > real).any()) or bool((lengths < 0).any()):
        raise ReftError(
            "a prompt length is negative or longer than its row's attended tokens; "
            "prompt_lengths must count prompt tokens only"
        )
    start = attention_mask.long().argmax(dim=1)  # 0 for right padding, #pads for left padding
    cap = lengths // 2
    first_n = cap.clamp(max=spec.first)
    last_n = cap.clamp(max=spec.last)

    front = torch.arange(spec.first, device=lengths.device)
    back = torch.arange(spec.last, device=lengths.device)
    first = Positions(start[:, None] + front, front[None] < first_n[:, None])
    # The last n prompt tokens in increasing order; slot j holds token L - n + j.
    back_index = start[:, None] + lengths[:, None] - last_n[:, None] + back
    last = Positions(back_index, back[None] < last_n[:, None])

    first = _zero_masked(first)
    last = _zero_masked(last)
    if share_weights:
        return {
            "all": Positions(
                torch.cat([first.index, last.index], dim=1),
                torch.cat([first.mask, last.mask], dim=1),
            )
        }
    named = {"first": first, "last": last}
    return {name: named[name] for name in spec.groups(share_weights)}


def _zero_masked(positions: Positions) -> Positions:
    """Point masked slots at index 0 so gathers stay in range; the mask keeps them unwritten."""
    return Positions(positions.index.masked_fill(~positions.mask, 0), positions.mask)
