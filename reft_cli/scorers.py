"""The paper's answer parsers and metrics, as plain functions on strings and numbers.

Parsers follow pyreft's examples/loreft/compute_metrics.py (itself following LLM-Adapters), so a
generation scores here exactly as it scored in the paper, with one deliberate change: an AQuA
answer letter must stand alone, so `Answer` is not read as `A`.

- commonsense: exact match of the text after the first `the correct answer is `.
- math: the last number in the output (commas removed), correct within 1e-3; AQuA the first A–E.
- GSM8K: the same number rule against the gold after `####`.
- GLUE: accuracy, F1, Matthews correlation, Pearson and Spearman (HF `evaluate` names), plus
  `combined_score`, the mean, when a task has more than one metric.

    score_commonsense("the correct answer is true", "true")  # Scored(parsed='true', correct=True)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from reft_cli.templates import COMMONSENSE_ANSWER

__all__ = [
    "COMMONSENSE_TRIGGER",
    "GLUE_METRICS",
    "NUMBER_TOLERANCE",
    "Scored",
    "accuracy",
    "alpaca_eval_record",
    "f1_binary",
    "glue_metrics",
    "is_number",
    "matthews_corrcoef",
    "parse_choice_letter",
    "parse_commonsense",
    "parse_number",
    "pearson",
    "ranks",
    "score_commonsense",
    "score_gsm8k",
    "score_math",
    "spearman",
]

COMMONSENSE_TRIGGER = COMMONSENSE_ANSWER  # "the correct answer is "
NUMBER_TOLERANCE = 1e-3
_NUMBER = re.compile(r"-?\d+\.?\d*")  # LLM-Adapters' pattern: "-3", "2.5", "7." (no exponent)
_LETTER = re.compile(r"\b[A-E]\b")  # a capital A–E standing alone: "(B)", "B.", not "Answer"


@dataclass(frozen=True)
class Scored:
    """What a parser read from one generation, and whether it matches the gold answer."""

    parsed: str | float | None
    correct: bool


# ---------------------------------------------------------------------------- parsers


def parse_commonsense(generation: str) -> str | None:
    """The text after the first `the correct answer is `, stripped; None without the trigger."""
    start = generation.find(COMMONSENSE_TRIGGER)
    if start < 0:
        return None
    return generation[start + len(COMMONSENSE_TRIGGER) :].strip()


def parse_number(text: str) -> float | None:
    """The last number in `text` after removing thousands commas; None when there is none."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def parse_choice_letter(text: str) -> str | None:
    """The first standalone capital letter A–E (an AQuA choice); None when there is none."""
    found = _LETTER.search(text.strip())
    return found.group(0) if found else None


def is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------- per-example scores


def score_commonsense(generation: str, gold: str) -> Scored:
    """Exact match of everything after the trigger: `the correct answer is true.` is wrong."""
    parsed = parse_commonsense(generation)
    return Scored(parsed, parsed is not None and parsed == gold.strip())


def score_math(generation: str, gold: str) -> Scored:
    """A numeric gold: the last number within 1e-3. Otherwise (AQuA): the first letter A–E."""
    gold = gold.strip()
    if is_number(gold):
        number = parse_number(generation)
        return Scored(number, number is not None and abs(float(gold) - number) <= NUMBER_TOLERANCE)
    letter = parse_choice_letter(generation)
    return Scored(letter, letter is not None and letter == gold)


def score_gsm8k(generation: str, answer: str) -> Scored:
    """GSM8K: the gold is the number after the last `####` of the reference answer."""
    gold = parse_number(answer.split("####")[-1])
    number = parse_number(generation)
    correct = gold is not None and number is not None and abs(gold - number) <= NUMBER_TOLERANCE
    return Scored(number, correct)


def alpaca_eval_record(instruction: str, output: str, generator: str) -> dict[str, str]:
    """One entry of the model-outputs JSON list that alpaca_eval reads."""
    return {"instruction": instruction, "output": output, "generator": generator}


# ---------------------------------------------------------------------------- GLUE metrics


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
