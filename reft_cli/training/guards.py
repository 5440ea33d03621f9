"""What keeps a run safe from the world outside its loop.

- RunLock: one run per output folder. Two runs writing the same checkpoints would interleave and
  both report success, so each holds an exclusive lock (filelock, `.reft.lock` inside the folder)
  from before it looks at the folder until it ends; the second fails at once. The lock file is
  removed, still locked, when the run ends, so the folder keeps nothing but what the run wrote.
- StopSignals: SIGTERM (a scheduler, `kill`, a container stop) stops a run the way Ctrl-C does, so
  it saves a checkpoint; and a stop that arrives while a step updates the weights waits until the
  step is counted, so a checkpoint always holds the state at a step boundary.
- weights_ok: a checkpoint is never written, nor called good, with weights gone non-finite.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from reft_cli.engine.folder_names import LOCK_NAME
from reft_cli.errors import ReftError
from reft_cli.training.run_dir import checkpoints, remove_stale_staging

WEIGHT_BOUND = math.sqrt(torch.finfo(torch.float32).max)
"""≈1.8e19: beyond it a weight's square overflows float32, so the intervention's R·Rᵀ (and any
product of two such weights) is inf; no trained weight is anywhere near, so it marks a run gone
wrong (train.learning_rate=1e30 puts every weight at ~1e30) before the loss shows it."""


class RunLock:
    """An exclusive, non-blocking lock on an output folder, created if needed."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.lock: FileLock | None = None
        self.created = False

    def acquire(self) -> None:
        folder = self.output_dir
        if folder.exists() and not folder.is_dir():
            raise ReftError(
                f"train.output_dir {folder} is a file, not a folder; choose a folder path"
            )
        self.created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(folder / LOCK_NAME)
            lock.acquire(timeout=0)
            if not _locks_the_file_at_its_path(lock):  # its holder removed it as we opened it
                lock.release()
                raise Timeout(lock.lock_file)
        except Timeout:
            self._forget_created()
            raise ReftError(
                f"{folder} is held by another reft run (it locks {folder / LOCK_NAME}); wait for "
                "it to finish or choose another train.output_dir"
            ) from None
        except OSError as err:
            raise ReftError(
                f"cannot write to train.output_dir {folder} ({err.strerror or err}); "
                "choose a folder you can write to"
            ) from None
        self.lock = lock

    def release(self) -> None:
        """Unlock; a folder this run created and left with nothing but the lock is removed."""
        if self.lock is None:
            return
        Path(self.lock.lock_file).unlink(missing_ok=True)  # before unlocking: see the check above
        self.lock.release()
        self.lock = None
        self._forget_created()

    def _forget_created(self) -> None:
        if self.created and [p.name for p in self.output_dir.iterdir()] in ([], [LOCK_NAME]):
            with contextlib.suppress(OSError):
                (self.output_dir / LOCK_NAME).unlink(missing_ok=True)
                self.output_dir.rmdir()
        self.created = False


def _locks_the_file_at_its_path(lock: FileLock) -> bool:
    """Whether the locked descriptor is still the file named LOCK_NAME (not one a finishing run
    unlinked between our open and our lock). Uses filelock's descriptor where it exposes it."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if not isinstance(fd, int):
        return True
    try:
        return os.fstat(fd).st_ino == os.stat(lock.lock_file).st_ino
    except FileNotFoundError:
        return False


class StopSignals:
    """While active, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, except inside
    `deferred()`, which raises it on leaving; the previous handlers come back afterwards."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread; leave them be
            return
        previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop arriving in here waits until the block is done (an update and its count)."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            self.pending = None
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: FrameType | None) -> Any:
        if self.deferring:
            self.pending = signum
            return
        raise KeyboardInterrupt


def weights_ok(params: Sequence[torch.Tensor]) -> bool:
    """Whether every trainable weight is finite and within WEIGHT_BOUND: one device-side reduction
    (the largest magnitude over all parameters) and one read back."""
    if not params:
        return True
    largest = torch.stack(torch._foreach_norm([p.detach() for p in params], math.inf)).max()
    return bool(largest.float() <= WEIGHT_BOUND)  # NaN compares False


def check_weights(params: Sequence[torch.Tensor], output_dir: Path, step: int) -> None:
    """Stop before saving weights that are not finite (or beyond WEIGHT_BOUND): every checkpoint
    written was checked, so the newest one is the last with finite weights."""
    if weights_ok(params):
        return
    where = last_checkpoint(output_dir, "the last checkpoint with finite weights")
    raise ReftError(
        f"the trainable weights became non-finite or absurdly large (beyond {WEIGHT_BOUND:.1e}) "
        f"by step {step}; {where}; lower train.learning_rate"
    )


def last_checkpoint(output_dir: Path, called: str) -> str:
    """`<called> is <newest checkpoint>`, for an error that stops the run."""
    saved = checkpoints(output_dir)
    return f"{called} is {saved[-1]}" if saved else "no checkpoint was saved yet"


def take_output_dir(lock: RunLock, output_dir: Path, main: bool, world: int) -> None:
    """Lock the output folder for the whole run (the main process; the others follow its verdict),
    then clear checkpoints a killed run left half-written."""
    error = None
    if main:
        try:
            lock.acquire()
            remove_stale_staging(output_dir)
        except ReftError as err:
            error = str(err)
    if world > 1:
        error = broadcast_object_list([error])[0]
    if error is not None:
        raise ReftError(error)
