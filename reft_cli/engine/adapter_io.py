"""Reading and writing adapter files: atomic writes, and safetensors loading that never unpickles."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reft_cli.errors import ReftError, first_line


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


ADAPTER_ADVICE = "re-save the adapter or use an earlier checkpoint"


def load_tensors(
    path: Path, advice: str = ADAPTER_ADVICE, missing: str | None = None
) -> dict[str, torch.Tensor]:
    """A safetensors file, never unpickled; a missing or unreadable one is a one-line error.

    `missing` replaces the message for an absent file; `advice` ends the message for a corrupt one.
    """
    if not path.is_file():
        raise ReftError(
            missing or f"{path.parent} is not a complete reft adapter: {path.name} is missing"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ReftError(f"{path} is corrupt ({first_line(err)}); {advice}") from err


def read_json_object(path: Path, advice: str) -> dict[str, Any]:
    """A JSON file that must hold an object; an unreadable one is a one-line error ending in `advice`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReftError(
            f"{path} is corrupt: it is not valid JSON ({first_line(err)}); {advice}"
        ) from err
    if not isinstance(data, dict):
        raise ReftError(f"{path} is corrupt: it must hold a JSON object; {advice}")
    return data


def load_matching_tensors(
    path: Path, expected: dict[str, torch.Tensor], described_by: str, advice: str
) -> dict[str, torch.Tensor]:
    """The tensors in `path`, refused unless they have exactly the names and shapes of `expected`.

    Other names are blamed on a mismatch with `described_by` (the file that sets the names), and
    the error ends with `advice`.
    """
    tensors = load_tensors(path)
    check_tensors(
        tensors,
        {name: tuple(target.shape) for name, target in expected.items()},
        source=path,
        described_by=described_by,
        advice=advice,
        shape_advice="the adapter does not fit this base model",
    )
    return tensors


def check_tensors(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    source: str | Path,
    described_by: str,
    advice: str,
    shape_advice: str,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Refuse adapter tensors unless they have exactly the names and shapes in `expected`.

    The one check of saved or imported adapter tensors, run before any is copied. A name mismatch
    says that `source` does not match `described_by` (what sets the names) and ends with `advice`;
    a wrong shape names the tensor (by `labels`, else `source: name`) and ends with `shape_advice`.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ReftError(
            f"{source} does not match {described_by} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); {advice}"
        )
    for name, shape in expected.items():
        found = tuple(tensors[name].shape)
        if found != tuple(shape):
            label = labels.get(name, name) if labels is not None else f"{source}: {name}"
            raise ReftError(f"{label} has shape {found}, expected {tuple(shape)}; {shape_advice}")


def current_umask() -> int:
    """The process umask (reading it requires setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_usual_mode(path: str | Path) -> None:
    """mkstemp and safetensors both make 0600 files; give one the mode the user's umask asks for."""
    os.chmod(path, 0o666 & ~current_umask())


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        give_usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
