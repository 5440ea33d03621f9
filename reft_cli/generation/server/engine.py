"""The engine: one worker thread owns the model and runs batched generate calls over a queue.

Requests become rows (one per prompt and choice) in a bounded queue. The worker takes the oldest
row and every waiting row with the same decode settings, up to the batch size, whatever their
adapters: `ReftModel.generate(adapter_names=...)` prefills each row with its own adapter's edits and
decodes the batch together on the base model. A batch runs to its end; rows that arrive meanwhile
wait for the next one (no joining a running batch). Per-row token limits and cancellations are one
stopping criterion over tensors; streamed tokens reach the event loop with one call per step, and
per-row work (detokenizing, stop strings) happens there, off the decode thread. Adapter loading and
unloading run on the same thread between batches, so the model never changes under a batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from reft_cli.config.schema import GenerateConfig
from reft_cli.data.examples import left_padded
from reft_cli.engine.loading import LoadedModel
from reft_cli.engine.reft_model import BASE
from reft_cli.generation.server.errors import ApiError

Deliver = Callable[[str, Any], None]  # (event, payload), called on the event loop


@dataclass(frozen=True)
class Sampling:
    """Decode settings rows must share to share a batch (temperature 0 is greedy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self, row: object) -> tuple:
        """Seeded rows batch alone: transformers draws one random stream for the whole batch."""
        if self.seed is not None:
            return ("seed", id(row))
        if self.greedy:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.top_k)

    def config(self, max_new_tokens: int) -> GenerateConfig:
        if self.greedy:
            return GenerateConfig(max_new_tokens=max_new_tokens)
        return GenerateConfig(
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
        )


@dataclass(eq=False)
class Row:
    """One prompt to answer once; `deliver` gets ("tokens", ids), ("done", (ids, reason)) or
    ("error", ApiError) on the event loop."""

    prompt: list[int]
    adapter: str
    max_tokens: int
    sampling: Sampling
    deliver: Deliver
    feed: bool = False  # send tokens as they come (streaming, stop strings)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    _slot: tuple[Tensor, int] | None = None

    def cancel(self) -> None:
        """Drop the row: skipped if still queued, stopped at the next step if running."""
        self.cancelled = True
        if self._slot is not None:
            flags, index = self._slot
            flags[index] = True


class RowStop(StoppingCriteria):
    """Row i is done once it has `limits[i]` new tokens or was cancelled (tensor ops only)."""

    def __init__(self, width: int, limits: Tensor, cancelled: Tensor) -> None:
        self.width, self.limits, self.cancelled = width, limits, cancelled

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        done = (input_ids.shape[1] - self.width) >= self.limits
        return done | self.cancelled.to(input_ids.device, non_blocking=True)


class StepFeed(BaseStreamer):
    """Hands each decode step's tokens (one list for the batch) to the event loop in one call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: list[Row]) -> None:
        self.loop = loop
        self.fed = [(i, row) for i, row in enumerate(rows) if row.feed]
        self.prompt_seen = False

    def put(self, value: Tensor) -> None:
        if not self.prompt_seen:  # generate's first call is the prompt itself
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(_fan_out, self.fed, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def _fan_out(fed: list[tuple[int, Row]], tokens: list[int]) -> None:
    for i, row in fed:
        if not row.cancelled:
            row.deliver("tokens", tokens[i])


class Engine:
    """The queue and the worker thread; `submit` and `call` are safe from any thread."""

    def __init__(self, loaded: LoadedModel, max_batch_size: int = 8, max_queue: int = 256) -> None:
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.eos = _eos_ids(loaded)
        self._rows: deque[Row] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._ready = threading.Condition()
        self._running: list[Row] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._work, name="reft-engine", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker; results are delivered on `loop`."""
        self._loop = loop
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._rows)

    def submit(self, rows: list[Row]) -> None:
        """Queue a request's rows, all or none: a full queue is a 503 the client may retry."""
        with self._ready:
            if self._closed:
                raise ApiError(503, "the server is shutting down", "server_shutting_down")
            if len(self._rows) + len(rows) > self.max_queue:
                raise ApiError(
                    503,
                    f"the server is overloaded: {len(self._rows)} rows are waiting "
                    f"(--max-queue {self.max_queue}); retry later",
                    "queue_full",
                )
            self._rows.extend(rows)
            self._ready.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the worker thread between batches (adapter loading and unloading)."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise ApiError(503, "the server is shutting down", "server_shutting_down")
            self._calls.append((fn, future))
            self._ready.notify()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, fail waiting rows, stop running ones, and join the worker."""
        with self._ready:
            self._closed = True
            waiting, self._rows = list(self._rows), deque()
            for row in self._running:
                row.cancel()
            self._ready.notify()
        error = ApiError(503, "the server is shutting down", "server_shutting_down")
        for row in waiting:
            self._send(row, "error", error)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------- the worker thread
    def _work(self) -> None:
        while True:
            with self._ready:
                while not (self._closed or self._rows or self._calls):
                    self._ready.wait()
                if self._calls:
                    fn, future = self._calls.popleft()
                elif self._closed:
                    return
                else:
                    fn, future = None, None
                    batch = self._take()
                    self._running = batch
            if fn is not None and future is not None:
                _run_call(fn, future)
            elif batch:
                self._run(batch)
                with self._ready:
                    self._running = []

    def _take(self) -> list[Row]:
        """The oldest live row and the waiting rows with its settings, up to the batch size."""
        while self._rows and self._rows[0].cancelled:
            self._rows.popleft()
        if not self._rows:
            return []
        key = self._rows[0].sampling.key(self._rows[0])
        batch: list[Row] = []
        rest: deque[Row] = deque()
        for row in self._rows:
            if row.cancelled:
                continue
            if len(batch) < self.max_batch_size and row.sampling.key(row) == key:
                batch.append(row)
            else:
                rest.append(row)
        self._rows = rest
        return batch

    def _run(self, rows: list[Row]) -> None:
        adapters = set(self.loaded.records)
        unknown = [r for r in rows if r.adapter != BASE and r.adapter not in adapters]
        for row in unknown:
            message = f"The model `{row.adapter}` was unloaded before its turn."
            self._send(row, "error", ApiError(404, message, "model_not_found", "model"))
        rows = [r for r in rows if r not in unknown]
        if not rows:
            return
        try:
            outputs = self._generate(rows)
        except Exception as err:  # a failed batch fails its rows, not the server
            failure = ApiError(500, f"generation failed: {type(err).__name__}: {err}", "internal")
            for row in rows:
                self._send(row, "error", failure)
            return
        for row, tokens in zip(rows, outputs, strict=True):
            if not row.cancelled:
                self._send(row, "done", self._finish(row, tokens))

    def _generate(self, rows: list[Row]) -> list[list[int]]:
        """One batched generate: every row's adapter on its prompt, decoding on the base model."""
        tokenizer = self.loaded.tokenizer
        batch = left_padded([r.prompt for r in rows], tokenizer.pad_token_id)
        width = batch["input_ids"].shape[1]
        device = self.loaded.device
        cancelled = torch.zeros(len(rows), dtype=torch.bool)
        now = time.monotonic()
        for i, row in enumerate(rows):
            row.started_at = now
            row._slot = (cancelled, i)
            cancelled[i] = row.cancelled
        limits = torch.tensor([r.max_tokens for r in rows], device=device)
        sampling = rows[0].sampling
        settings = sampling.config(max(r.max_tokens for r in rows))
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        assert self._loop is not None
        streamer = StepFeed(self._loop, rows) if any(r.feed for r in rows) else None
        out = self.loaded.generate(
            batch["input_ids"],
            batch["attention_mask"],
            [r.adapter for r in rows],
            stopping_criteria=StoppingCriteriaList([RowStop(width, limits, cancelled)]),
            streamer=streamer,
            **settings.kwargs(tokenizer.pad_token_id),
        )
        return out[:, width:].tolist()

    def _finish(self, row: Row, tokens: list[int]) -> tuple[list[int], str]:
        """The row's own tokens (up to its limit, without the end-of-text token) and why it ended."""
        tokens = tokens[: row.max_tokens]
        for position, token in enumerate(tokens):
            if token in self.eos:
                return tokens[:position], "stop"
        return tokens, "length" if len(tokens) >= row.max_tokens else "stop"

    def _send(self, row: Row, event: str, payload: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(row.deliver, event, payload)


def _run_call(fn: Callable[[], Any], future: Future) -> None:
    try:
        future.set_result(fn())
    except Exception as err:  # handed to the caller, who turns it into a response
        future.set_exception(err)


def _eos_ids(loaded: LoadedModel) -> set[int]:
    """Every token that ends a generation: the generation config's and the tokenizer's."""
    config = getattr(loaded.base_model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if loaded.tokenizer.eos_token_id is not None:
        found.add(loaded.tokenizer.eos_token_id)
    return found
