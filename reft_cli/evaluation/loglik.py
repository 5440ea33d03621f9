"""Multiple-choice scoring by log-likelihood, the way lm-evaluation-harness scores a base model.

Each answer option is a continuation of a context; the model's score for it is the sum of the
log-probabilities of the continuation's tokens given everything before them, and the likeliest
option is the answer. `acc_norm` divides each sum by the continuation's length in characters, so
long options are not penalized for having more tokens. An untrained model's honest baseline on a
multiple-choice set is this, not the exact-match score of its free generations.

One forward pass per (item, option), in length-sorted, right-padded batches. With an adapter the
context is the prompt: its length is `prompt_lengths`, so interventions edit the context's
positions and never the option's. The head runs only on the positions that predict a
continuation token where the model can (`logits_to_keep`): most positions are context.

    requests, cut = encode_requests(tokenizer, items, max_length=512)
    logliks = continuation_logliks(subject, requests, batch_size=16)
    predictions, metrics = choose(items, logliks)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from reft_cli.data.examples import IGNORE_INDEX, Example, collate
from reft_cli.data.mc_format import split_option
from reft_cli.engine.loading import LoadedModel
from reft_cli.errors import ReftError
from reft_cli.evaluation.predict import length_sorted_batches
from reft_cli.training.loss import next_token_targets, takes_logits_to_keep

__all__ = ["Request", "choose", "continuation_logliks", "encode_requests"]

OPTION_KEYS = ("choices", "gold_index", "contexts", "continuations")
_CHUNK = 512  # positions per log-softmax in float64: bounds its memory to 512 x vocab


@dataclass(frozen=True)
class Request:
    """One option of one item, tokenized: the context's ids, then the continuation's."""

    context: list[int]
    continuation: list[int]


def encode_requests(
    tokenizer: PreTrainedTokenizerBase, items: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[Request], int]:
    """Every option of every item in order, and how many were cut to `max_length` on the left.

    The split is `split_option`'s, the one `data.mc_format: loglik` trains on. Cutting drops the
    context's first tokens and keeps the whole continuation.
    """
    requests, cut = [], 0
    for item in items:
        for context, continuation in zip(item["contexts"], item["continuations"], strict=True):
            context_ids, continuation_ids = split_option(tokenizer, context, continuation)
            split, ids = len(context_ids), context_ids + continuation_ids
            if len(ids) > max_length:
                cut += 1
                split -= len(ids) - max_length
                ids = ids[-max_length:]
                if split < 1:
                    raise ReftError(
                        f"the answer option {continuation[:40]!r} leaves no context within "
                        f"data.max_length={max_length}; raise data.max_length"
                    )
            requests.append(Request(ids[:split], ids[split:]))
    return requests, cut


@torch.no_grad()
def continuation_logliks(
    subject: LoadedModel,
    requests: Sequence[Request],
    batch_size: int,
    advance: Callable[[int], None] = lambda n: None,
) -> list[float]:
    """The summed log-probability of each request's continuation given its context."""
    if subject.tokenizer.pad_token_id is None:
        raise ReftError("the tokenizer has no pad token; set one (for example its eos token)")
    full = [r.context + r.continuation for r in requests]
    on_targets = takes_logits_to_keep(subject.base_model)
    out = [0.0] * len(requests)
    for rows in length_sorted_batches([len(ids) for ids in full], batch_size):
        examples = [
            Example(i, full[i], len(requests[i].context), labels=_labels(requests[i])) for i in rows
        ]
        batch = collate(examples, subject.tokenizer.pad_token_id)
        targets = next_token_targets(batch.pop("labels")).to(subject.device)
        keep = targets != IGNORE_INDEX  # the logits at position t predict token t + 1
        if on_targets:
            logits = subject.logits(batch, logits_to_keep=keep)
        else:
            logits = subject.logits(batch)[keep]
        picked = torch.cat(
            [
                part.double().log_softmax(-1).gather(-1, wanted[:, None])[:, 0]
                for part, wanted in zip(
                    logits.split(_CHUNK), targets[keep].split(_CHUNK), strict=True
                )
            ]
        )
        sums = torch.zeros(len(rows), dtype=torch.float64, device=picked.device)
        sums.index_add_(0, keep.nonzero()[:, 0], picked)
        for i, value in zip(rows, sums.tolist(), strict=True):
            out[i] = value
        advance(len(rows))
    return out


def _labels(request: Request) -> list[int]:
    """Training-style labels: ignored over the context, the continuation's ids after it."""
    return [IGNORE_INDEX] * len(request.context) + request.continuation


def choose(
    items: Sequence[dict[str, Any]], logliks: Sequence[float]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-item records (option log-likelihoods, choices, gold, correct) and accuracy, acc_norm."""
    predictions, position = [], 0
    for index, item in enumerate(items):
        count = len(item["continuations"])
        scores = list(logliks[position : position + count])
        position += count
        normed = [s / len(c) for s, c in zip(scores, item["continuations"], strict=True)]
        chosen, chosen_norm = _argmax(scores), _argmax(normed)
        gold = item["gold_index"]
        predictions.append(
            {
                "index": index,
                "contexts": item["contexts"],
                "continuations": item["continuations"],
                "choices": item["choices"],
                "logliks": scores,
                "chosen": chosen,
                "chosen_norm": chosen_norm,
                "gold": gold,
                "correct": chosen == gold,
                "correct_norm": chosen_norm == gold,
            }
        )
    if position != len(logliks):
        raise ValueError(f"{len(logliks)} log-likelihoods for {position} options")
    total = len(predictions)
    metrics = {
        "accuracy": sum(p["correct"] for p in predictions) / total,
        "acc_norm": sum(p["correct_norm"] for p in predictions) / total,
    }
    return predictions, metrics


def _argmax(values: Sequence[float]) -> int:
    """The first index of the largest value."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
