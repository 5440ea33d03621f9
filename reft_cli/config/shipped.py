"""The configs that ship inside the package, so `reft configs` works from an installed wheel.

They live in `reft_cli/configs/`; the repository's top-level `configs/` points at the same files.
"""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

from reft_cli.errors import ReftError

_ROOT = files("reft_cli") / "configs"


def _all() -> dict[str, Path]:
    with as_file(_ROOT) as root:
        return {
            str(path.relative_to(root).with_suffix("")): path
            for path in sorted(Path(root).rglob("*.yaml"))
        }


def shipped_configs() -> list[tuple[str, str]]:
    """(name, first header line) for each shipped config, e.g. ('glue/cola', 'GLUE CoLA ...')."""
    out = []
    for name, path in _all().items():
        header = next(
            (
                line.lstrip("# ").strip()
                for line in path.read_text().splitlines()
                if line.startswith("#")
            ),
            "",
        )
        out.append((name, header))
    return out


def find_config(name: str) -> Path | None:
    return _all().get(name.removesuffix(".yaml"))


def _require(name: str) -> Path:
    path = find_config(name)
    if path is None:
        names = ", ".join(_all())
        raise ReftError(f"no shipped config named {name!r}; choose one of {names}")
    return path


def read_config(name: str) -> str:
    return _require(name).read_text()


def copy_config(name: str, dest: Path) -> Path:
    """Copy to `dest` (a folder keeps the config's file name); never overwrites."""
    source = _require(name)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists():
        raise ReftError(f"{target} already exists; choose another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
