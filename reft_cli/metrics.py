"""GLUE's metrics as plain functions: accuracy, F1, Matthews correlation, Pearson and Spearman.

Named as HF `evaluate.load("glue", task)` names them, plus `combined_score` (the mean) when a task
has more than one. Shared by training's evaluation and `reft eval`, so it sits outside the layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    _same_length(preds, labels)
    return sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)


def f1_binary(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are no predicted and no true positives."""
    _same_length(preds, labels)
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels, strict=True))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels, strict=True))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation (the multiclass form sklearn uses); 0 when it is undefined."""
    _same_length(preds, labels)
    n = len(labels)
    classes = sorted(set(preds) | set(labels))
    correct = sum(p == y for p, y in zip(preds, labels, strict=True))
    predicted = [sum(p == k for p in preds) for k in classes]
    true = [sum(y == k for y in labels) for k in classes]
    cov_py = correct * n - sum(a * b for a, b in zip(predicted, true, strict=True))
    cov_pp = n * n - sum(a * a for a in predicted)
    cov_yy = n * n - sum(b * b for b in true)
    if cov_pp == 0 or cov_yy == 0:
        return 0.0
    return cov_py / math.sqrt(cov_pp * cov_yy)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either side is constant (as scipy returns)."""
    _same_length(x, y)
    mx, my = sum(x) / len(x), sum(y) / len(y)
    dx = [a - mx for a in x]
    dy = [b - my for b in y]
    sxx, syy = sum(a * a for a in dx), sum(b * b for b in dy)
    if sxx == 0 or syy == 0:
        return math.nan
    return sum(a * b for a, b in zip(dx, dy, strict=True)) / math.sqrt(sxx * syy)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the (average-tied) ranks."""
    return pearson(ranks(x), ranks(y))


GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearmanr"),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "sst2": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "mnli": ("accuracy",),
    "wnli": ("accuracy",),
}
"""Each GLUE task's metrics, named as HF `evaluate.load("glue", task)` names them."""

_METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


def glue_metrics(task: str, preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """The task's metrics, plus `combined_score` (their mean) when there are several."""
    result = {name: _METRIC_FUNCTIONS[name](preds, labels) for name in GLUE_METRICS[task]}
    if len(result) > 1:
        result["combined_score"] = sum(result.values()) / len(result)
    return result


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"metrics need equal, non-empty sequences (got {len(a)} and {len(b)})")
