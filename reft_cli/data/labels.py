"""Class labels of sequence-classification data: one mapping from label names to class ids.

Training (`example_labels`) and evaluation (`label_ids`, with the adapter's recorded names) share
it, so a label name gets the same id in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reft_cli.config.schema import DataConfig
from reft_cli.data.templates import missing_column
from reft_cli.errors import ReftError

__all__ = ["example_labels", "label_ids"]


def example_labels(
    records: Sequence[Mapping[str, Any]],
    data_cfg: DataConfig,
    label_names: Sequence[str] | None,
    num_labels: int | None,
) -> list[int | float]:
    """Each record's target: a float (regression), a class id, or a string label's id."""
    column = data_cfg.columns.get("label", "label")
    if column not in records[0]:
        raise missing_column([column], "label", list(records[0]))
    values = [row[column] for row in records]
    if num_labels == 1:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError) as err:
            raise ReftError(
                f"model.num_labels is 1 (regression) but column {column!r} is not numeric: {err}"
            ) from err
    if not any(isinstance(v, str) for v in values):
        if any(v is None or int(v) != v for v in values):
            raise ReftError(
                f"column {column!r} holds non-integer labels; set model.num_labels=1 for "
                "regression, or use class ids or names"
            )
        return [int(v) for v in values]
    return label_ids(values, label_names, f" in column {column!r}", "training")


def label_ids(
    values: Sequence[Any], label_names: Sequence[str] | None, where: str, whose: str
) -> list[int]:
    """String labels to class ids, in the order of `label_names` (default: the values, sorted).

    Training and evaluation share it so that a name gets the same id in both. A label outside
    `label_names` is an error that names it, `where` it was found and `whose` labels it missed.
    """
    names = list(label_names) if label_names is not None else sorted({str(v) for v in values})
    ids = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in values} - set(ids))
    if unknown:
        raise ReftError(
            f"labels {', '.join(unknown[:5])}{where} are not among the {whose} labels "
            f"({', '.join(names)})"
        )
    return [ids[str(v)] for v in values]
