"""A request in flight, on the event loop: its rows' tokens become text deltas and a result.

The engine delivers events here; detokenizing and stop strings are per-row work, so they run on
the event loop rather than in the decode step. A stop string ends its row at once (the engine is
told to stop it) and is not part of the text, as in the OpenAI API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from reft_cli.data.decoding import finished_text
from reft_cli.generation.server.engine import Row, Sampling
from reft_cli.generation.server.errors import ApiError
from reft_cli.generation.server.logprobs import TokenLogprob, token_logprob


@dataclass
class Choice:
    """One row's text so far; `sent` is what has been streamed."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    finish: str | None = None
    count: int = 0  # completion tokens
    logprobs: list[TokenLogprob] = field(default_factory=list)
    logprobs_sent: int = 0


@dataclass(frozen=True)
class Delta:
    index: int
    text: str
    finish: str | None
    logprobs: list[TokenLogprob] | None = None  # the tokens since the last delta, when asked


class Pending:
    """The rows of one request (prompts x n) and their events, in order."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[list[int]],
        adapter: str,
        max_tokens: list[int],
        sampling: Sampling,
        n: int,
        stop: list[str],
        stream: bool,
        logprobs: int = -1,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.prompt_tokens = sum(len(p) for p in prompts) * n
        self.choices: list[Choice] = []
        self.rows: list[Row] = []
        self.events: asyncio.Queue[Delta | ApiError] = asyncio.Queue()
        for p, prompt in enumerate(prompts):
            for _ in range(n):
                index = len(self.rows)
                self.choices.append(Choice())
                self.rows.append(
                    Row(
                        prompt,
                        adapter,
                        max_tokens[p],
                        sampling,
                        lambda event, payload, i=index: self._deliver(i, event, payload),
                        feed=stream or bool(stop),
                        logprobs=logprobs,
                        index=index,
                    )
                )
        self.open = len(self.rows)

    @property
    def completion_tokens(self) -> int:
        return sum(c.count for c in self.choices)

    @property
    def started_at(self) -> float | None:
        times = [r.started_at for r in self.rows if r.started_at is not None]
        return min(times) if times else None

    @property
    def first_token_at(self) -> float | None:
        times = [r.first_at for r in self.rows if r.first_at is not None]
        return min(times) if times else None

    def cancel(self) -> None:
        for row in self.rows:
            row.cancel()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text as it is made, then one delta with each row's finish reason."""
        while self.open:
            event = await self.events.get()
            if isinstance(event, ApiError):
                self.cancel()
                raise event
            if event.finish is not None:
                self.open -= 1
            yield event

    async def result(self) -> list[Choice]:
        async for _ in self.deltas():
            pass
        return self.choices

    # ----------------------------------------------------------------- events from the engine
    def _deliver(self, index: int, event: str, payload: Any) -> None:
        choice = self.choices[index]
        if choice.finish is not None:
            return
        if event == "error":
            self.events.put_nowait(payload)
        elif event == "tokens":
            token, entry = payload
            choice.tokens.append(token)
            choice.count += 1
            if entry is not None:
                choice.logprobs.append(token_logprob(self.tokenizer, entry))
            self._advance(index, choice, final=False)
        else:
            tokens, reason, entries = payload
            choice.tokens, choice.count = tokens, len(tokens)
            if len(entries) > len(choice.logprobs):  # not fed: they come at the end
                choice.logprobs = [token_logprob(self.tokenizer, e) for e in entries]
            self._advance(index, choice, final=True, reason=reason)

    def _advance(self, index: int, choice: Choice, final: bool, reason: str = "stop") -> None:
        text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True)
        cut = self._stop_at(text, choice.sent)
        if cut is not None:
            text, final, reason = text[:cut], True, "stop"
            self.rows[index].cancel()
        if not final:
            if text.endswith("\ufffd"):  # half a character: wait for the rest of its bytes
                return
            ready = len(text) - self.hold
        else:
            if cut is None:  # the answer's own end, not a stop string: drop a half character
                text = finished_text(text)
            ready = len(text)
        choice.text = text
        if ready > choice.sent or final:
            delta = text[choice.sent : max(ready, choice.sent)]
            choice.sent = max(ready, choice.sent)
            if final:
                choice.finish = reason
            if delta or final:
                scores = None
                if self.rows[index].logprobs >= 0:
                    scores = choice.logprobs[choice.logprobs_sent :]
                    choice.logprobs_sent = len(choice.logprobs)
                self.events.put_nowait(Delta(index, delta, choice.finish, scores))

    def _stop_at(self, text: str, sent: int) -> int | None:
        """Where the first stop string begins in `text`, looking only past what was sent."""
        start = max(0, sent - self.hold)
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None
