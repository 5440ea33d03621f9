"""How each benchmark's raw row becomes an item: the LLM-Adapters instruction (character for
character, so hub, offline and LLM-Adapters copies score alike) and, for the multiple-choice sets,
its answer options (`choices`, `gold_index`, and the `contexts` and `continuations` that
log-likelihood scoring compares)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from reft_cli.evaluation.scorers import COMMONSENSE_TRIGGER

Row = Mapping[str, Any]
Item = dict[str, Any]


# ---------------------------------------------------------------------------- LLM-Adapters formats


def _choose(instruction: str, question: str, label: str, options: Sequence[str]) -> str:
    """`Please choose the correct {what} to the question: Q\n\nAnswer1: a Answer2: b ...`."""
    listed = " ".join(f"{label.capitalize()}{i}: {text}" for i, text in enumerate(options, 1))
    formats = "/".join(f"{label}{i}" for i in range(1, len(options) + 1))
    return f"{instruction}: {question}\n\n{listed}\n\nAnswer format: {formats}"


def boolq(row: Row) -> Item:
    answer = row["answer"]
    if isinstance(answer, str):
        answer = answer.strip().lower() == "true"
    instruction = (
        "Please answer the following question with true or false, question: "
        f"{row['question']}?\n\nAnswer format: true/false"
    )
    return {"instruction": instruction, "gold": "true" if answer else "false"}


def piqa(row: Row) -> Item:
    options = "\n\n".join(f"Solution{i}: {row[f'sol{i}']}" for i in (1, 2))
    instruction = (
        f"Please choose the correct solution to the question: {row['goal']}\n\n{options}\n\n"
        "Answer format: solution1/solution2"
    )
    return {"instruction": instruction, "gold": f"solution{int(row['label']) + 1}"}


def siqa(row: Row) -> Item:
    question = f"{row['context']} {row['question']}"
    options = [row["answerA"], row["answerB"], row["answerC"]]
    instruction = _choose(
        "Please choose the correct answer to the question", question, "answer", options
    )
    return {"instruction": instruction, "gold": f"answer{int(row['label'])}"}


def hellaswag(row: Row) -> Item:
    question = f"{row['activity_label']}: {row['ctx']}"
    instruction = _choose(
        "Please choose the correct ending to complete the given sentence",
        question,
        "ending",
        row["endings"],
    )
    return {"instruction": instruction, "gold": f"ending{int(row['label']) + 1}"}


def winogrande(row: Row) -> Item:
    # LLM-Adapters puts no blank line before this set's answer format.
    instruction = (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{row['sentence']}\n\nOption1: {row['option1']} Option2: {row['option2']} "
        "Answer format: option1/option2"
    )
    return {"instruction": instruction, "gold": f"option{int(row['answer'])}"}


def _lettered(question: str, choices: Mapping[str, Sequence[str]], key: str) -> Item:
    labels = [str(label) for label in choices["label"]]
    if str(key) not in labels:
        raise ValueError(f"answer key {key!r} is not among the choice labels {labels}")
    instruction = _choose(
        "Please choose the correct answer to the question", question, "answer", choices["text"]
    )
    return {"instruction": instruction, "gold": f"answer{labels.index(str(key)) + 1}"}


def arc(row: Row) -> Item:
    return _lettered(row["question"], row["choices"], row["answerKey"])


def openbookqa(row: Row) -> Item:
    return _lettered(row["question_stem"], row["choices"], row["answerKey"])


# ---------------------------------------------------------------------------- answer options
# For log-likelihood scoring (loglik.py), in lm-evaluation-harness's style: each option is a
# continuation of a plain-text context, and the option whose tokens the model finds likeliest wins.
# Contexts carry what the LLM-Adapters instruction carries (BoolQ: the question, not the passage),
# so a log-likelihood baseline sees the same information as a generating model.


def _options(
    context: str | Sequence[str], choices: Sequence[str], gold: int, after: Sequence[str] = ()
) -> Item:
    """`choices` as continuations (`after`, default " choice") of one context or one per choice."""
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold option {gold} is not among the {len(choices)} options")
    contexts = [context] * len(choices) if isinstance(context, str) else list(context)
    return {
        "choices": [str(c) for c in choices],
        "gold_index": gold,
        "contexts": contexts,
        "continuations": list(after) or [f" {c}" for c in choices],
    }


def boolq_options(row: Row) -> Item:
    gold = boolq(row)["gold"] == "true"
    return _options(f"Question: {row['question']}?\nAnswer:", ["no", "yes"], int(gold))


def piqa_options(row: Row) -> Item:
    return _options(
        f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])
    )


def siqa_options(row: Row) -> Item:
    choices = [row["answerA"], row["answerB"], row["answerC"]]
    context = f"Question: {row['context']} {row['question']}\nAnswer:"
    return _options(context, choices, int(row["label"]) - 1)


def _hellaswag_text(text: str) -> str:
    """WikiHow rows carry markup ([title], [step], ...): the title ends a sentence, the rest goes."""
    text = re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". "))
    return text.replace("  ", " ").strip()


def hellaswag_options(row: Row) -> Item:
    ctx = row["ctx"]
    if row.get("ctx_a") is not None and row.get("ctx_b") is not None:
        ctx = f"{row['ctx_a']} {str(row['ctx_b']).capitalize()}"
    context = _hellaswag_text(f"{row['activity_label']}: {ctx}")
    choices = [_hellaswag_text(ending) for ending in row["endings"]]
    return _options(context, choices, int(row["label"]))


def winogrande_options(row: Row) -> Item:
    """Each option fills the blank; the rest of the sentence is the continuation scored."""
    sentence = row["sentence"]
    if "_" not in sentence:
        raise ValueError("the sentence has no blank '_'")
    before, _, rest = sentence.partition("_")
    choices = [row["option1"], row["option2"]]
    contexts = [f"{before}{option}" for option in choices]
    return _options(contexts, choices, int(row["answer"]) - 1, [f" {rest.strip()}"] * 2)


def _lettered_options(context: str, choices: Mapping[str, Sequence[str]], key: str) -> Item:
    labels = [str(label) for label in choices["label"]]
    if str(key) not in labels:
        raise ValueError(f"answer key {key!r} is not among the choice labels {labels}")
    return _options(context, choices["text"], labels.index(str(key)))


def arc_options(row: Row) -> Item:
    context = f"Question: {row['question']}\nAnswer:"
    return _lettered_options(context, row["choices"], row["answerKey"])


def openbookqa_options(row: Row) -> Item:
    return _lettered_options(row["question_stem"], row["choices"], row["answerKey"])


def gsm8k(row: Row) -> Item:
    return {"question": row["question"], "gold": row["answer"]}


def alpaca_eval(row: Row) -> Item:
    return {"instruction": row["instruction"], "input": row.get("input") or "", "gold": None}


def adapters_item(row: Row) -> Item:
    """An LLM-Adapters JSON row: instruction (and input) with its answer; AQuA's may be a list."""
    gold = row["answer"]
    if isinstance(gold, list | tuple):
        gold = gold[0] if gold else ""
    return {"instruction": row["instruction"], "input": row.get("input") or "", "gold": str(gold)}


def adapters_row(item: Item) -> dict[str, str]:
    """A commonsense item as an LLM-Adapters training row (instruction, input, output, answer)."""
    gold = str(item["gold"])
    return {
        "instruction": item["instruction"],
        "input": "",
        "output": f"{COMMONSENSE_TRIGGER}{gold}",
        "answer": gold,
    }
