"""The engine: one worker thread owns the model and runs a decode loop that rows join and leave.

Requests become rows (one per prompt and choice) in a bounded queue. Each turn of the loop admits
waiting rows, oldest first, up to the batch size and to a prefill budget (the padded prompt tokens
one prefill may run, so a burst of long prompts delays the running rows' next step by a bounded
amount), whatever their adapters or decode settings: the new rows are
prefilled together, each with its own adapter's edits (`adapter_names`), and join the running
batch (batch.py). Then one decode step runs every row on the plain base model, since the edits
live in the cache. So a new request waits at most one step and one prefill for its first token.
Rows leave at their end-of-text token, their token limit, or when cancelled (a stop string, a
client gone); those checks are tensor ops over the batch. Each step's tokens reach the event loop
in one call, and per-row work (detokenizing, stop strings) happens there, off this thread.
Adapter loading and unloading run on this thread between steps: rows already decoding keep their
edits in the cache, so the model may change under them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from reft_cli.data.examples import left_padded
from reft_cli.engine.loading import LoadedModel
from reft_cli.engine.reft_model import BASE, ReftModel
from reft_cli.generation.server.batch import Batch
from reft_cli.generation.server.errors import ApiError
from reft_cli.generation.server.sampler import Draws, Penalties, next_tokens, top_logprobs
from reft_cli.training.loss import cache_argument, takes_logits_to_keep

Deliver = Callable[[str, Any], None]  # (event, payload), called on the event loop
RUNNING, EOS, LENGTH = 0, 1, 2  # a row's state after a step


@dataclass(frozen=True)
class Sampling:
    """A request's decode settings (temperature 0 is greedy; top_k 0 is no top-k filter)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0  # transformers' and vLLM's: prompt and answer tokens
    presence_penalty: float = 0.0  # OpenAI's: answer tokens
    frequency_penalty: float = 0.0

    @property
    def penalties(self) -> tuple[float, float, float] | None:
        """(repetition, presence, frequency), or None when none applies."""
        found = (self.repetition_penalty, self.presence_penalty, self.frequency_penalty)
        return None if found == (1.0, 0.0, 0.0) else found


@dataclass(eq=False)
class Row:
    """One prompt to answer once. `deliver` gets ("tokens", (id, logprob entry)) as tokens come
    when `feed`, then ("done", (ids, reason, entries)), or ("error", ApiError), on the event loop.
    `logprobs` is how many top log-probabilities to report (-1: none); `index` tells a request's
    choices apart, so n choices under one seed differ."""

    prompt: list[int]
    adapter: str
    max_tokens: int
    sampling: Sampling
    deliver: Deliver
    feed: bool = False  # send tokens as they come (streaming, stop strings)
    logprobs: int = -1
    index: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    first_at: float | None = None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)  # event loop only
    entries: list[tuple] = field(default_factory=list)  # event loop only
    _draw: tuple | None = None
    _on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        """Drop the row: skipped if still queued, removed before the next step if running."""
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel()

    def take(self, token: int, state: int, entry: tuple | None) -> None:
        """One step's token for this row (on the event loop)."""
        if self.first_at is None:
            self.first_at = time.monotonic()
        if state != EOS:
            self.tokens.append(token)
            if entry is not None:
                self.entries.append(entry)
            if self.feed:
                self.deliver("tokens", (token, entry))
        if state != RUNNING:
            reason = "stop" if state == EOS else "length"
            self.deliver("done", (self.tokens, reason, self.entries))


class Engine:
    """The queue and the worker thread; `submit` and `call` are safe from any thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        max_batch_size: int = 8,
        max_queue: int = 256,
        max_prefill_tokens: int = 8192,
    ) -> None:
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.eos = _eos_ids(loaded)
        self.batch_sizes: Counter[int] = Counter()  # decode steps run at each batch size
        self.prefill_sizes: Counter[int] = Counter()  # prefills run for each number of rows
        self._rows: deque[Row] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._ready = threading.Condition()
        self._batch: Batch | None = None
        self._cancelled = False  # a running row was cancelled since the last step
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._work, name="reft-engine", daemon=True)
        base = loaded.base_model
        self._cache_name = cache_argument(base)
        self._extra = {"logits_to_keep": 1} if takes_logits_to_keep(base) else {}
        self._eos_ids = torch.empty(0, dtype=torch.long)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker; results are delivered on `loop`."""
        self._loop = loop
        self._eos_ids = torch.tensor(sorted(self.eos), dtype=torch.long, device=self.loaded.device)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._rows)

    @property
    def running(self) -> int:
        batch = self._batch
        return len(batch) if batch is not None else 0

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
        """Run `fn` on the worker thread between steps (adapter loading and unloading)."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise ApiError(503, "the server is shutting down", "server_shutting_down")
            self._calls.append((fn, future))
            self._ready.notify()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, fail waiting and running rows, and join the worker."""
        with self._ready:
            self._closed = True
            waiting, self._rows = list(self._rows), deque()
            batch = self._batch
            running = list(batch.rows) if batch is not None else []
            self._ready.notify()
        error = ApiError(503, "the server is shutting down", "server_shutting_down")
        for row in [*waiting, *running]:
            self._send(row, "error", error)
            row.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------- the worker thread
    def _work(self) -> None:
        while True:
            with self._ready:
                while not (self._closed or self._rows or self._calls or self._batch):
                    self._ready.wait()
                calls, self._calls = list(self._calls), deque()
                admitted = self._take()
                closing = self._closed
            for fn, future in calls:
                _run_call(fn, future)
            if admitted:
                self._admit(admitted)
            if self._batch is not None:
                self._step()
            elif closing:
                return

    def _take(self) -> list[Row]:
        """The oldest live waiting rows, as many as the running batch has room for and whose
        left-padded prompts fit the prefill budget; one row always fits, however long. A model
        whose cache cannot be padded (sliding windows) admits only into an empty batch."""
        batch = self._batch
        if batch is not None and not batch.joinable():
            return []
        room = self.max_batch_size - (len(batch) if batch is not None else 0)
        taken: list[Row] = []
        width = 0
        while self._rows and len(taken) < room:
            row = self._rows[0]
            wider = max(width, len(row.prompt))
            if not row.cancelled and taken and wider * (len(taken) + 1) > self.max_prefill_tokens:
                break
            self._rows.popleft()
            if not row.cancelled:
                taken.append(row)
                width = wider
        return taken

    def _admit(self, rows: list[Row]) -> None:
        adapters = set(self.loaded.records)
        unknown = [r for r in rows if r.adapter != BASE and r.adapter not in adapters]
        for row in unknown:
            message = f"The model `{row.adapter}` was unloaded before its turn."
            self._send(row, "error", ApiError(404, message, "model_not_found", "model"))
        rows = [r for r in rows if r not in unknown]
        if not rows:
            return
        try:
            new = self._prefill(rows)
        except Exception as err:  # a failed prefill fails its rows, not the server
            self._fail(rows, err)
            return
        if not len(new):
            return
        if self._batch is None:
            self._batch = new
        else:
            rows = self._batch.rows + new.rows
            self._batch.join(new, _draws(rows, self.loaded.device))

    def _prefill(self, rows: list[Row]) -> Batch:
        """The new rows' prompts through the model with their adapters' edits, and first tokens."""
        self.prefill_sizes[len(rows)] += 1
        device = self.loaded.device
        padded = left_padded([r.prompt for r in rows], self.loaded.tokenizer.pad_token_id)
        ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
        now = time.monotonic()
        for row in rows:
            row.started_at = now
            row._on_cancel = self._note_cancel
            row._draw = _draw(row, device)
        base = self.loaded.base_model
        cache = DynamicCache(config=base.config)
        model = self.loaded.model
        edits = (
            model.prompt_edits(mask, adapter_names=[r.adapter for r in rows])
            if isinstance(model, ReftModel)
            else contextlib.nullcontext()
        )
        with torch.no_grad(), edits:
            out = base(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(dim=1) - 1).clamp_min(0),
                use_cache=True,
                **{self._cache_name: cache},
                **self._extra,
            )
        logits = out.logits[:, -1].float()
        draws = _draws(rows, device)
        penalties = _penalties(rows, ids, mask, logits.shape[-1])
        tokens = _choose(logits, draws, penalties)
        batch = Batch(
            rows,
            cache,
            mask,
            positions=mask.sum(dim=1),
            last=tokens,
            counts=torch.ones(len(rows), dtype=torch.long, device=device),
            limits=torch.tensor([r.max_tokens for r in rows], device=device),
            draws=draws,
            logprobs=max(r.logprobs for r in rows),
            penalties=penalties,
        )
        self._emit(batch, logits, tokens)
        return batch

    def _step(self) -> None:
        """Drop cancelled rows, then one token for every running row."""
        batch = self._batch
        assert batch is not None
        if self._cancelled:
            self._cancelled = False
            self._retire(batch, [not r.cancelled for r in batch.rows])
            if not len(batch):
                self._batch = None
                return
        self.batch_sizes[len(batch)] += 1
        ones = torch.ones_like(batch.mask[:, :1])
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        try:
            with torch.no_grad():
                out = self.loaded.base_model(
                    input_ids=batch.last[:, None],
                    attention_mask=batch.mask,
                    position_ids=batch.positions[:, None],
                    use_cache=True,
                    **{self._cache_name: batch.cache},
                    **self._extra,
                )
        except Exception as err:  # a failed step fails the batch, not the server
            self._batch = None
            self._fail(batch.rows, err)
            return
        logits = out.logits[:, -1].float()
        tokens = _choose(logits, batch.draws, batch.penalties)
        batch.positions += 1
        batch.counts += 1
        batch.last = tokens
        self._emit(batch, logits, tokens)
        if not len(batch):
            self._batch = None

    def _emit(self, batch: Batch, logits: Tensor, tokens: Tensor) -> None:
        """Send the step's tokens to the event loop in one call and drop the rows that ended."""
        ended = torch.isin(tokens, self._eos_ids)
        state = torch.where(
            ended, EOS, torch.where(batch.counts >= batch.limits, LENGTH, RUNNING)
        ).to(tokens.dtype)
        ids, states = torch.stack([tokens, state]).tolist()
        scores = None
        if batch.logprobs >= 0:
            chosen, values, top = top_logprobs(logits, tokens, batch.logprobs)
            scores = (chosen.tolist(), values.tolist(), top.tolist())
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_fan_out, tuple(batch.rows), ids, states, scores)
        if any(states):
            self._retire(batch, [s == RUNNING for s in states])

    def _retire(self, batch: Batch, keep: list[bool]) -> None:
        rows = [r for r, k in zip(batch.rows, keep, strict=True) if k]
        index = torch.tensor(keep, device=batch.mask.device).nonzero().flatten()
        batch.keep(index, rows, _draws(rows, self.loaded.device))

    def _note_cancel(self) -> None:
        self._cancelled = True

    def _fail(self, rows: list[Row], err: Exception) -> None:
        failure = ApiError(500, f"generation failed: {type(err).__name__}: {err}", "internal")
        for row in rows:
            self._send(row, "error", failure)

    def _send(self, row: Row, event: str, payload: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(row.deliver, event, payload)


def _fan_out(
    rows: tuple[Row, ...],
    ids: list[int],
    states: list[int],
    scores: tuple[list, list, list] | None,
) -> None:
    """On the event loop: each live row takes its token (and log-probabilities, if it asked)."""
    for i, row in enumerate(rows):
        if row.cancelled:
            continue
        entry = None
        if scores is not None and row.logprobs >= 0:
            k = row.logprobs
            entry = (ids[i], scores[0][i], scores[1][i][:k], scores[2][i][:k])
        row.take(ids[i], states[i], entry)


def _draw(row: Row, device: torch.device) -> tuple:
    """(temperature, top_p, top_k, generator): a seeded sampled row gets its own generator."""
    s = row.sampling
    generator = None
    if s.seed is not None and s.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(hash((s.seed, row.index)) & (2**63 - 1))
    return (s.temperature, s.top_p, s.top_k, generator)


def _draws(rows: list[Row], device: torch.device) -> Draws:
    return Draws.of([r._draw for r in rows], device)


def _penalties(rows: list[Row], ids: Tensor, mask: Tensor, vocab: int) -> Penalties | None:
    """The new rows' penalties over their prompts, or None when no row has one."""
    settings = [r.sampling.penalties for r in rows]
    if all(s is None for s in settings):
        return None
    return Penalties.of([s or (1.0, 0.0, 0.0) for s in settings], ids, mask, vocab)


def _choose(logits: Tensor, draws: Draws, penalties: Penalties | None) -> Tensor:
    """The next tokens from raw logits (log-probabilities are reported from the raw ones)."""
    if penalties is None:
        return next_tokens(logits, draws)
    tokens = next_tokens(penalties.apply(logits), draws)
    penalties.record(tokens)
    return tokens


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
