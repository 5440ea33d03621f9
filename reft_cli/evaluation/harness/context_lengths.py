"""Where each row's context ends in the right-padded batches lm-eval scores by log-likelihood.

lm-eval's HFLM turns each request (context ids, continuation ids) into one model input, cut on the
left to `max_length + 1` tokens with its last token dropped, pads the inputs of a batch on the right
with zeros and calls the model with those tokens alone. ReFT edits the prompt's positions, so the
backend must know, per row, how many of its tokens are context. HFLM passes only the tokens; this
index recovers each row's request from them: every request's input is recorded before lm-eval
batches, and a padded row is looked up by its tokens with the zero padding taken off.

    index = ContextLengths(requests, max_length=2048)
    lengths, contexts = index.rows(batch)  # real lengths and context lengths, one per row
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from reft_cli.errors import ReftError

Request = tuple[object, Sequence[int], Sequence[int]]  # (cache key, context ids, continuation ids)


class ContextLengths:
    """Model inputs, as lm-eval builds them, mapped to the number of context tokens in each."""

    def __init__(self, requests: Iterable[Request], max_length: int) -> None:
        self._context: dict[tuple[int, ...], int] = {}
        self._clashes: set[tuple[int, ...]] = set()
        for _, context, continuation in requests:
            ids = [*context, *continuation][-(max_length + 1) :]
            cut = len(context) + len(continuation) - len(ids)
            key, length = tuple(ids[:-1]), max(len(context) - cut, 0)
            if self._context.setdefault(key, length) != length:
                self._clashes.add(key)

    def rows(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """(real length, context length) of each row of a batch right-padded with zeros."""
        lengths, contexts = [], []
        for row in inputs.tolist():
            length = self._length(row)
            lengths.append(length)
            contexts.append(self._context[tuple(row[:length])])
        return torch.tensor(lengths), torch.tensor(contexts)

    def _length(self, row: list[int]) -> int:
        """The one unpadded length under which the row is a recorded input."""
        end = len(row)
        while end > 0 and row[end - 1] == 0:
            end -= 1
        found = [n for n in range(end, len(row) + 1) if tuple(row[:n]) in self._context]
        if not found:
            raise ReftError(
                "a log-likelihood batch row matches none of the requests, so its intervention "
                "positions are unknown (does this lm-eval version build inputs differently?)"
            )
        if len(found) > 1 or tuple(row[: found[0]]) in self._clashes:
            raise ReftError(
                "two log-likelihood requests give the same input tokens with different context "
                "lengths, so ReFT's prompt positions cannot be told apart; score them apart"
            )
        return found[0]
