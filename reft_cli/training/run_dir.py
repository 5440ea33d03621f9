"""The run's output folder: refusing to clobber another run, and the checkpoints inside it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from reft_cli.engine.folder_names import (
    ADAPTER_MARKERS,
    CHECKPOINT_PATTERN,
    CONFIG_NAME,
    LOCK_NAME,
    LOG_NAME,
    LORA_CONFIG_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    STAGING_PATTERN,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
    checkpoint_name,
)
from reft_cli.engine.staged_dir import staged_dir
from reft_cli.errors import ReftError

RUN_FILES = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LORA_CONFIG_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    LOG_NAME,
    TRAINING_CONFIG_NAME,
)


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := CHECKPOINT_PATTERN.fullmatch(p.name)) and _is_adapter(p)
    ]
    return [p for _, p in sorted(found)]


def _is_adapter(folder: Path) -> bool:
    """A ReFT or LoRA adapter folder (its record file is written last)."""
    return any((folder / name).is_file() for name in ADAPTER_MARKERS)


def holds_a_run(output_dir: Path) -> bool:
    return output_dir.is_dir() and (
        any((output_dir / name).exists() for name in RUN_FILES) or bool(checkpoints(output_dir))
    )


def foreign_entries(output_dir: Path) -> list[str]:
    """What a folder holds besides a run's own bookkeeping (its lock, staged checkpoints).

    A folder that holds a run is all the run's; one that does not is the user's unless empty.
    """
    if not output_dir.is_dir() or holds_a_run(output_dir):
        return []
    return sorted(
        p.name
        for p in output_dir.iterdir()
        if p.name != LOCK_NAME and not STAGING_PATTERN.fullmatch(p.name)
    )


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to write over another run's output, or into a folder of the user's own files,
    unless the user said so (or is resuming it)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ReftError(
            f"train.output_dir {output_dir} is a file, not a folder; choose a folder path"
        )
    if overwrite:
        return
    if holds_a_run(output_dir) and not resuming:
        raise ReftError(
            f"{output_dir} already holds a run; choose another train.output_dir, resume it with "
            "train.resume_from_checkpoint=latest, or set train.overwrite_output_dir=true"
        )
    if found := foreign_entries(output_dir):
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ReftError(
            f"{output_dir} is not empty and holds no reft run ({shown}); choose a new or empty "
            "train.output_dir, or set train.overwrite_output_dir=true to write into it"
        )


def remove_stale_staging(output_dir: Path) -> None:
    """Delete checkpoint folders a killed run left half-written (only names staged_dir makes).

    Called while holding the folder's lock, so no live run is writing them.
    """
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if path.is_dir() and STAGING_PATTERN.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)


def start_output_dir(output_dir: Path, resuming: bool) -> None:
    """Create the folder; a new run (allowed to overwrite) first removes the previous run's files.

    Called once the model and data are built, so a config error never costs the old run.
    """
    if not resuming:
        for name in RUN_FILES:
            (output_dir / name).unlink(missing_ok=True)
        for checkpoint in checkpoints(output_dir):
            shutil.rmtree(checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)


def resolve_checkpoint(output_dir: Path, resume: str) -> Path:
    """`latest` → the newest checkpoint in the output folder; otherwise the path given."""
    if resume == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise ReftError(
                f"train.resume_from_checkpoint=latest but {output_dir} has no checkpoint; "
                "start without resuming"
            )
        return found[-1]
    path = Path(resume)
    if not _is_adapter(path):
        raise ReftError(
            f"checkpoint {path} not found or incomplete; pass a checkpoint-<step> folder or latest"
        )
    return path


def write_checkpoint(output_dir: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder with `write`, then rename it to checkpoint-<step> in one move."""
    target = output_dir / checkpoint_name(step)
    with staged_dir(target, replace=True) as tmp:
        write(tmp)
    return target


def prune_checkpoints(output_dir: Path, limit: int | None, keep: Path | None) -> None:
    """Delete the oldest checkpoints beyond `limit`, never the one in `keep` (the best so far)."""
    if limit is None:
        return
    found = checkpoints(output_dir)
    removable = [p for p in found if keep is None or p.resolve() != keep.resolve()]
    excess = len(found) - limit
    for path in removable[: max(excess, 0)]:
        shutil.rmtree(path)
