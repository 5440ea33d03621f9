"""Multiple-choice rows trained as log-likelihood scoring measures them (`data.mc_format: loglik`).

`reft eval --scoring loglik` scores an answer option by the summed log-probability of its
continuation's tokens given its context (evaluation/loglik.py). Training on prompt = the gold
option's context and response = its continuation, split into tokens by the same function and with
no eos added (the scorer scores none), makes the training loss the mean negative log-likelihood of
exactly the tokens the scorer sums, so training raises what is measured.

A row carries the fields the evaluation task builders give each item: `contexts` and
`continuations` (one per option) and `gold_index`.

    prompt_ids, response_ids = split_option(tokenizer, "Question: is it?\\nAnswer:", " yes")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from reft_cli.data.templates import missing_column
from reft_cli.errors import ReftError

__all__ = ["MC_COLUMNS", "Option", "gold_options", "row_options", "split_option"]

MC_COLUMNS = ("contexts", "continuations", "gold_index")


def split_option(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one option.

    Context and continuation are tokenized together and split where the context's own tokens end,
    so a tokenizer that spells a word differently at the start of a text gets it as it is in the
    sentence. The one split both training and the scorer use.
    """
    split = len(tokenizer(context)["input_ids"])
    ids = list(tokenizer(context + continuation)["input_ids"])
    if len(ids) <= split:
        raise ReftError(
            f"the answer option {continuation!r} tokenizes to no tokens after its context"
        )
    return ids[:split], ids[split:]


@dataclass(frozen=True)
class Option:
    """One answer option of row `row`, tokenized; `gold` is that row's gold option."""

    row: int
    index: int
    gold: int
    context: list[int]
    continuation: list[int]


def row_options(
    records: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase
) -> list[Option]:
    """Every option of every row, rows in order: what selection accuracy scores."""
    out = []
    for i, row in enumerate(records):
        contexts, continuations, gold = _checked(i, row)
        for k, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
            context_ids, continuation_ids = split_option(tokenizer, context, continuation)
            if not context_ids:
                raise ReftError(f"row {i}: option {k}'s context tokenizes to no tokens")
            out.append(Option(i, k, gold, context_ids, continuation_ids))
    return out


def gold_options(
    records: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase
) -> list[tuple[list[int], list[int]]]:
    """Each row's gold option as (prompt ids, response ids), in row order."""
    out = []
    for i, row in enumerate(records):
        contexts, continuations, gold = _checked(i, row)
        context_ids, continuation_ids = split_option(tokenizer, contexts[gold], continuations[gold])
        if not context_ids:
            raise ReftError(f"row {i}: the gold option's context tokenizes to no tokens")
        out.append((context_ids, continuation_ids))
    return out


def _checked(i: int, row: Mapping[str, Any]) -> tuple[Sequence[str], Sequence[str], int]:
    missing = [name for name in MC_COLUMNS if row.get(name) is None]
    if missing:
        raise missing_column(missing, "prompt", list(row)) from None
    contexts, continuations = row["contexts"], row["continuations"]
    gold = int(row["gold_index"])
    if len(contexts) != len(continuations) or not 0 <= gold < len(contexts):
        raise ReftError(
            f"row {i}: data.mc_format=loglik needs as many contexts as continuations and a "
            f"gold_index among them; got {len(contexts)}, {len(continuations)} and {gold}"
        )
    return contexts, continuations, gold
