"""Split names that `reft train` (data.eval_split) and `reft eval` (--split, eval.split) share.

`validation[200:]` is a split and a Python slice of its rows. `selection of validation` and
`test of validation` are the two halves of the paper's GLUE re-split of those rows: 1000 rows
for model selection when there are more than 5000, else half; the rest is the reported test.
Training selects its checkpoint on one half and `reft eval` reports the other, and both draw
the re-split with train.seed, so the halves never overlap. A slice inside re-splits only those
rows: `test of validation[500:]` leaves rows 0-499 free for training (glue-mini does this).

    spec = parse_split_spec("selection of validation[500:]")  # SplitSpec("validation", ...)
    rows = take_split(rows, spec, seed=42)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reft_cli.errors import ReftError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "HALVES",
    "SplitSpec",
    "glue_resplit",
    "half_spec",
    "parse_split",
    "parse_split_spec",
    "take_split",
]

HALVES = ("selection", "test")
"""The two halves of the re-split: model selection during training, and the reported test."""

_SPLIT = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$")
_HALF = re.compile(r"^\s*(\w+)\s+of\s+(.+)$")


@dataclass(frozen=True)
class SplitSpec:
    """A split to load, the rows of it to keep, and optionally one half of their re-split."""

    name: str
    part: slice = field(default_factory=lambda: slice(None))
    half: str | None = None  # selection | test


def glue_resplit(size: int, seed: int) -> tuple[list[int], list[int]]:
    """The paper's re-split of a GLUE validation set: (selection rows, reported test rows).

    Model selection takes 1000 rows when the split has more than 5000, else half (rounded down);
    the rest is the reported test. Rows are drawn with `seed`; each part keeps the file order.
    """
    chosen = 1000 if size > 5000 else size // 2
    picked = set(random.Random(seed).sample(range(size), chosen))
    selection = [i for i in range(size) if i in picked]
    return selection, [i for i in range(size) if i not in picked]


def parse_split(split: str) -> tuple[str, slice]:
    """`validation[200:]` -> ('validation', slice(200, None)); `test` -> ('test', slice(None))."""
    found = _SPLIT.match(split)
    if not found:
        raise ReftError(
            f"split {split!r} is not a split name with an optional slice, like test or "
            "validation[200:]"
        )
    name, start, stop = found.groups()
    return name, slice(int(start) if start else None, int(stop) if stop else None)


def parse_split_spec(split: str) -> SplitSpec:
    """A plain split (`validation[200:]`) or a half of its re-split (`test of validation`)."""
    return half_spec(split) or SplitSpec(*parse_split(split))


def half_spec(split: str) -> SplitSpec | None:
    """`HALF of SPLIT[slice]` as a SplitSpec; None for any other split name."""
    found = _HALF.match(split)
    if found is None:
        return None
    half, rest = found.groups()
    if half not in HALVES:
        raise ReftError(
            f"split {split!r}: {half!r} is not a half of the re-split; write selection of "
            f"{rest.strip()} or test of {rest.strip()}"
        )
    name, part = parse_split(rest)
    return SplitSpec(name, part, half)


def take_split(rows: datasets.Dataset, spec: SplitSpec, seed: int) -> datasets.Dataset:
    """The rows `spec` keeps of a loaded split: its slice, then its half of their re-split."""
    rows = rows.select(list(range(len(rows))[spec.part]))
    if spec.half is not None:
        selection, test = glue_resplit(len(rows), seed)
        rows = rows.select(selection if spec.half == "selection" else test)
        if len(rows) == 0:
            raise ReftError(
                f"the {spec.half} half of split {spec.name!r} is empty (it has too few rows to "
                "re-split); use more rows"
            )
    return rows
