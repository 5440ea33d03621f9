"""The paper's answer parsers and metrics: tricky generations, and metrics against hand-computed values."""

import math

import pytest

from reft_cli.evaluation.scorers import (
    alpaca_eval_record,
    parse_choice_letter,
    parse_commonsense,
    parse_number,
    score_commonsense,
    score_gsm8k,
    score_math,
)
from reft_cli.metrics import (
    accuracy,
    f1_binary,
    glue_metrics,
    matthews_corrcoef,
    pearson,
    ranks,
    spearman,
)

# ---------------------------------------------------------------------------- commonsense


@pytest.mark.parametrize(
    ("generation", "gold", "parsed", "correct"),
    [
        ("the correct answer is true", "true", "true", True),
        ("Sure! the correct answer is option2\n", "option2", "option2", True),
        ("the correct answer is true.", "true", "true.", False),  # exact match, not a prefix
        ("True.", "true", None, False),  # no trigger
        ("The correct answer is answer1", "answer1", None, False),  # the trigger is lower case
        (
            "the correct answer is answer1 the correct answer is answer2",  # trigger twice: the first
            "answer1",
            "answer1 the correct answer is answer2",
            False,
        ),
        ("the correct answer is ending3 ", "ending3", "ending3", True),
        ("the correct answer is ", "true", "", False),
    ],
)
def test_commonsense_reads_exactly_the_text_after_the_first_trigger(
    generation, gold, parsed, correct
):
    scored = score_commonsense(generation, gold)
    assert scored.parsed == parsed
    assert scored.correct is correct


def test_commonsense_parser_without_trigger_is_none():
    assert parse_commonsense("I think it is solution1") is None


# ---------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The total is 1,234 dollars.", 1234.0),
        ("1,000,000", 1_000_000.0),
        ("It drops to -3.5 degrees", -3.5),
        ("First 12.50, then the answer is 7", 7.0),
        ("x = 5.", 5.0),
        ("answer: -0.25", -0.25),
        ("no digits here", None),
        ("", None),
    ],
)
def test_parse_number_takes_the_last_number_without_commas(text, number):
    assert parse_number(text) == number


@pytest.mark.parametrize(
    ("generation", "gold", "correct"),
    [
        ("so she pays 1,234.", "1234", True),
        ("The answer is 7.0005", "7", True),  # within 1e-3
        ("The answer is 7.002", "7", False),
        ("The answer is -3", "-3.0", True),
        ("3 apples and 4 pears make 7 fruits, not 3", "7", False),  # the last number counts
        ("I do not know", "7", False),
    ],
)
def test_math_numbers_match_within_a_thousandth(generation, gold, correct):
    assert score_math(generation, gold).correct is correct


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (B).", "B"),
        ("Answer: C", "C"),
        ("Answer", None),  # `Answer` is not read as `A`
        ("Answers vary; Eventually D.", "D"),  # nor `E` in `Eventually`
        ("The answer is C, not A", "C"),  # the first standalone letter wins
        ("A train leaves at noon... so (E)", "A"),  # ... even an article (LLM-Adapters' rule)
        ("none of these", None),
    ],
)
def test_aqua_letter_is_the_first_standalone_capital_a_to_e(text, letter):
    assert parse_choice_letter(text) == letter


def test_aqua_gold_letter_is_scored_by_letter_not_number():
    assert score_math("The answer is (C) 252 gms.", "C").correct
    assert not score_math("Answer 252 gms", "A").correct


# ---------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    ("generation", "answer", "correct"),
    [
        ("... so 1234.\nThe final answer is: 1234", "He pays 1,200+34=1,234.\n#### 1,234", True),
        ("The final answer is: -5", "It falls 5 degrees.\n#### -5", True),
        ("The final answer is: 2.5", "#### 2.5", True),
        ("The final answer is: 18", "Janet sells 9 eggs.\n#### 18", True),
        ("The final answer is: 19", "Janet sells 9 eggs.\n#### 18", False),
        ("No number at all", "#### 18", False),
    ],
)
def test_gsm8k_compares_the_last_number_with_the_gold_after_hashes(generation, answer, correct):
    assert score_gsm8k(generation, answer).correct is correct


@pytest.mark.parametrize(
    ("generation", "correct"),
    [
        ("The final answer is: 18.0009", True),  # 9e-4 off: just inside the 1e-3 tolerance
        ("The final answer is: 17.9991", True),  # ... on either side
        ("The final answer is: 18.0011", False),  # 1.1e-3 off: just outside it
        ("The final answer is: 17.9989", False),
    ],
)
def test_gsm8k_accepts_numbers_within_a_thousandth_and_no_further(generation, correct):
    assert score_gsm8k(generation, "Janet sells 9 eggs.\n#### 18").correct is correct


@pytest.mark.parametrize(
    ("generation", "correct"),
    [("The answer is 7.0009", True), ("The answer is 7.0011", False)],
)
def test_math_tolerance_boundary_is_a_thousandth(generation, correct):
    assert score_math(generation, "7").correct is correct


# ---------------------------------------------------------------------------- GLUE metrics

PREDS = [1, 1, 0, 0, 1]
LABELS = [1, 0, 0, 0, 1]  # TP 2, FP 1, TN 2, FN 0


def test_binary_metrics_match_hand_computed_values():
    assert accuracy(PREDS, LABELS) == pytest.approx(4 / 5)
    assert f1_binary(PREDS, LABELS) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 4 / sqrt(3*2*3*2)
    assert matthews_corrcoef(PREDS, LABELS) == pytest.approx(4 / 6)


def test_multiclass_matthews_matches_the_general_formula():
    # n=4, correct=2, predicted counts (2,1,1), true counts (1,2,1):
    # (2*4 - 5) / sqrt((16 - 6) * (16 - 6)) = 0.3
    assert matthews_corrcoef([0, 1, 2, 0], [0, 1, 1, 2]) == pytest.approx(0.3)


def test_degenerate_metrics_are_zero_not_errors():
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # one predicted class
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_pearson_and_spearman_with_ties_match_hand_computed_values():
    x, y = [1, 2, 3, 4], [2, 4, 5, 4]
    assert pearson(x, y) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    assert ranks(y) == [1.0, 2.5, 4.0, 2.5]  # the two 4s share ranks 2 and 3
    assert spearman(x, y) == pytest.approx(3.0 / math.sqrt(5 * 4.5))


def test_spearman_agrees_with_scipy_on_random_ties():
    import random

    from scipy import stats  # in the dev extra: the check runs, never skips

    rng = random.Random(0)
    x = [rng.randint(0, 5) for _ in range(50)]
    y = [a + rng.randint(-2, 2) for a in x]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_glue_metrics_names_and_combined_score():
    assert glue_metrics("cola", PREDS, LABELS) == {"matthews_correlation": pytest.approx(4 / 6)}
    mrpc = glue_metrics("mrpc", PREDS, LABELS)
    assert mrpc["combined_score"] == pytest.approx((0.8 + 0.8) / 2)
    stsb = glue_metrics("stsb", [1, 2, 3, 4], [2, 4, 5, 4])
    assert set(stsb) == {"pearson", "spearmanr", "combined_score"}
    assert stsb["combined_score"] == pytest.approx((stsb["pearson"] + stsb["spearmanr"]) / 2)


def test_metrics_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="equal"):
        accuracy([1, 0], [1])


def test_alpaca_eval_record_has_exactly_alpaca_evals_fields():
    assert alpaca_eval_record("Say hi.", "Hi!", "my-adapter") == {
        "instruction": "Say hi.",
        "output": "Hi!",
        "generator": "my-adapter",
    }
