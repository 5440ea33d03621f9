"""A checkpoint's training state (optimizer, LR scheduler, RNG streams, progress), without pickle.

Resuming from it continues a run bit-exactly: the same batches, the same updates, the same learning
rates as if the run had never stopped. Tensors go to safetensors files and everything else to JSON,
so loading a checkpoint never unpickles.

    checkpoint-<step>/
      optimizer.safetensors  # optimizer tensors ("state.3.exp_avg"), scheduler tensors if any
      rng.safetensors        # torch CPU/CUDA, Python and NumPy generator states, per process
      training_state.json    # progress, optimizer param_groups and numbers, scheduler, RNG scalars

In the JSON a tensor appears as {"__tensor__": key} (its key in the .safetensors file beside it), a
tuple as {"__tuple__": [...]} and a dict with int keys as {"__int_keys__": {...}}, so each state dict
comes back with the types it left with.
"""

from __future__ import annotations

import json
import numbers
import random
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from reft_cli.engine.adapter_io import (
    atomic_write_text,
    load_tensors,
    read_json_object,
    save_tensors,
)
from reft_cli.engine.folder_names import OPTIMIZER_NAME, RNG_NAME, TRAINING_STATE_NAME
from reft_cli.errors import ReftError, first_line

try:
    import numpy as np
except ImportError:  # numpy is optional; without it there is no NumPy stream to keep
    np = None

OTHER_PROCESSES = "rng_other_processes"  # the JSON key of processes 1.. in a multi-process run
FORMAT_VERSION = 1
RESUME_ADVICE = "resume from an earlier checkpoint or start a new run"

_TENSOR, _TUPLE, _INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"


@dataclass
class Progress:
    """Where the run stands: enough to skip the batches already consumed and keep the best model."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # batches of the current epoch already consumed
    best_metric: float | None = None
    best_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able values only


class Stateful(Protocol):
    """An optimizer or LR scheduler, accelerate-wrapped or not."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def capture_rng() -> dict[str, Any]:
    """Every global random stream a training step may draw from (dropout, shuffling, sampling)."""
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss_next),
        "torch": torch.get_rng_state(),
    }
    if np is not None:
        name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
        states["numpy"] = (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached)
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    """Put back what `capture_rng` returned, so the next draws repeat the interrupted run's."""
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))
    torch.set_rng_state(states["torch"])
    if np is not None and "numpy" in states:
        name, key, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = states.get("cuda", [])
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, state in enumerate(cuda[:devices]):
        torch.cuda.set_rng_state(state, index)
    if len(cuda) != devices and (cuda or devices):
        warnings.warn(
            f"the checkpoint holds random states for {len(cuda)} GPU(s) and this machine has "
            f"{devices}; GPU random draws (dropout) will not repeat the interrupted run's",
            stacklevel=2,
        )


def save_training_state(
    directory: Path,
    optimizer: Stateful,
    scheduler: Stateful,
    progress: Progress,
    rng_states: list[dict[str, Any]] | None = None,
) -> None:
    """Write the three files; each is atomic, and the JSON that points into the others goes last.

    `rng_states` holds every process's `capture_rng()`, in process order (this process's alone
    when not given): each process draws its own dropout masks, so each resumes its own streams.
    """
    directory = Path(directory)
    rng_states = rng_states or [capture_rng()]
    optimizer_tensors: dict[str, torch.Tensor] = {}
    rng_tensors: dict[str, torch.Tensor] = {}
    state = {
        "format_version": FORMAT_VERSION,
        "progress": asdict(progress),
        "optimizer": _encode(optimizer.state_dict(), "", optimizer_tensors),
        "scheduler": _encode(scheduler.state_dict(), "scheduler", optimizer_tensors),
        "rng": _encode(rng_states[0], "", rng_tensors),
    }
    if len(rng_states) > 1:  # process 0's stay under "rng", where single-process runs keep theirs
        others = {index: states for index, states in enumerate(rng_states) if index}
        state[OTHER_PROCESSES] = _encode(others, "process", rng_tensors)
    text = json.dumps(state, indent=2) + "\n"  # before any write: progress.extra may not be JSON
    metadata = {"format": "pt", "reft_format_version": str(FORMAT_VERSION)}
    save_tensors(directory / OPTIMIZER_NAME, optimizer_tensors, metadata)
    save_tensors(directory / RNG_NAME, rng_tensors, metadata)
    atomic_write_text(directory / TRAINING_STATE_NAME, text)


def load_training_state(
    directory: Path,
    optimizer: Stateful,
    scheduler: Stateful,
    process_index: int = 0,
    num_processes: int = 1,
) -> Progress:
    """Restore optimizer, scheduler and this process's RNG streams in place; every file is read
    and checked first."""
    directory = Path(directory)
    optimizer_tensors = _read_tensors(directory / OPTIMIZER_NAME)
    rng_tensors = _read_tensors(directory / RNG_NAME)
    path = directory / TRAINING_STATE_NAME
    raw = _read_json(path)
    try:
        if raw["format_version"] > FORMAT_VERSION:
            raise ReftError(
                f"{path} was written by a newer reft (format {raw['format_version']}); "
                "upgrade reft to resume from it"
            )
        progress = _progress(raw["progress"])
        optimizer_state = _decode(raw["optimizer"], optimizer_tensors)
        scheduler_state = _decode(raw["scheduler"], optimizer_tensors)
        rng_states = {0: _decode(raw["rng"], rng_tensors)}
        rng_states |= _decode(raw.get(OTHER_PROCESSES, {}), rng_tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReftError(f"{path} is corrupt ({first_line(err)}); {RESUME_ADVICE}") from err
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ReftError(
            f"the optimizer state in {directory} does not fit this run's trainable parameters "
            f"({first_line(err)}); resume with the config that wrote it or start a new run"
        ) from err
    if len(rng_states) != num_processes:
        warnings.warn(
            f"{directory} holds random states for {len(rng_states)} process(es) and this run has "
            f"{num_processes}; processes without their own start from process 0's, so their "
            "random draws (dropout) will not repeat the interrupted run's",
            stacklevel=2,
        )
    restore_rng(rng_states.get(process_index, rng_states[0]))
    return progress


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON form of `value`; its tensors are moved into `tensors` under dotted keys."""
    if isinstance(value, torch.Tensor):
        if key in tensors:
            raise ValueError(f"two tensors of the training state map to the key {key!r}")
        tensors[key] = value
        return {_TENSOR: key}
    if isinstance(value, (tuple, list)):
        items = [_encode(v, _join(key, i), tensors) for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        items = {str(k): _encode(v, _join(key, k), tensors) for k, v in value.items()}
        if all(type(k) is int for k in value) and value:
            return {_INT_KEYS: items}
        if not all(isinstance(k, str) for k in value) or {_TENSOR, _TUPLE, _INT_KEYS} & set(value):
            raise TypeError(
                f"cannot store the dict at {key!r}: its keys must be all str or all int"
            )
        return items
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"cannot store a {type(value).__name__} at {key!r} without pickle")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_encode`: tensors, tuples and int keys come back as they were."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        if value[_TENSOR] not in tensors:
            raise KeyError(f"tensor {value[_TENSOR]!r} is not in the .safetensors files")
        return tensors[value[_TENSOR]]
    if _TUPLE in value:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if _INT_KEYS in value:
        return {int(k): _decode(v, tensors) for k, v in value[_INT_KEYS].items()}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _progress(data: dict[str, Any]) -> Progress:
    known = {f.name for f in fields(Progress)}
    if unknown := sorted(set(data) - known):
        warnings.warn(f"ignoring progress fields from a newer reft: {unknown}", stacklevel=3)
    return Progress(**{k: v for k, v in data.items() if k in known})


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path, RESUME_ADVICE, missing=_missing(path))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReftError(_missing(path))
    return read_json_object(path, RESUME_ADVICE)


def _missing(path: Path) -> str:
    return f"{path} is missing, so the run cannot resume from it; {RESUME_ADVICE}"


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)
