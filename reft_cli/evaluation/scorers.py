"""The paper's answer parsers and metrics, as plain functions on strings and numbers.

Parsers follow pyreft's examples/loreft/compute_metrics.py (itself following LLM-Adapters), so a
generation scores here exactly as it scored in the paper, with one deliberate change: an AQuA
answer letter must stand alone, so `Answer` is not read as `A`.

- commonsense: exact match of the text after the first `the correct answer is `.
- math: the last number in the output (commas removed), correct within 1e-3; AQuA the first A–E.
- GSM8K: the same number rule against the gold after `####`.
- GLUE's metrics live in reft_cli.metrics, shared with training's evaluation.

    score_commonsense("the correct answer is true", "true")  # Scored(parsed='true', correct=True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reft_cli.data.templates import COMMONSENSE_ANSWER

__all__ = [
    "COMMONSENSE_TRIGGER",
    "NUMBER_TOLERANCE",
    "Scored",
    "alpaca_eval_record",
    "is_number",
    "parse_choice_letter",
    "parse_commonsense",
    "parse_number",
    "score_commonsense",
    "score_gsm8k",
    "score_math",
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
