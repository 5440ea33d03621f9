"""Writing a whole output folder at once: build it beside its destination, then rename it into place.

Readers never see half a folder, a failure leaves nothing behind, and an existing folder is never
overwritten unless the caller says it is its own to replace (a run's checkpoint-<step>).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reft_cli.engine.adapter_io import current_umask
from reft_cli.errors import ReftError


def refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ReftError(f"{out} already exists; choose a new --out or remove it first")


@contextmanager
def staged_dir(out: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `out`; on success it becomes `out`.

    With `replace`, an existing `out` is moved aside just before the rename and removed after it,
    so at every moment `out` is either the old folder or the new one.
    """
    out = Path(out)
    if not replace:
        refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; use the usual mode
        old = None
        if replace and out.is_dir() and not out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old.tmp", dir=out.parent))
            os.rename(out, old / out.name)
        refuse_existing(out)  # someone may have created it meanwhile
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
