"""Reading a run config: YAML through safe_load, `key=value` overrides, then one validation that
reports every problem together.

    cfg = load_config("configs/alpaca.yaml", ["train.learning_rate=1e-3", "train.seed=1"])
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from reft_cli.config.schema import RunConfig
from reft_cli.config.validation import ConfigError, check_path
from reft_cli.errors import ReftError


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (None: the defaults), apply `key=value` overrides, validate the result."""
    source = str(path) if path is not None else "the config"
    data: Any = (
        {}
        if path is None
        else read_yaml(
            Path(path),
            f"config file {path} not found; check the path (shipped configs are in configs/)",
        )
    )
    if data is None:  # an empty file
        data = {}
    problems: list[str] = []
    if isinstance(data, dict):
        for text in overrides:
            problem = _apply_override(data, text)
            if problem:
                problems.append(f"override {text!r}: {problem}")
    try:
        config = RunConfig.from_dict(data, source)
    except ConfigError as err:
        raise ConfigError(problems + err.problems, source) from None
    if problems:
        raise ConfigError(problems, source)
    return config


def read_yaml(path: Path, missing: str) -> Any:
    """A YAML file through safe_load (no tags run code); `missing` is the error when it is absent.
    Bad syntax names its line and column."""
    if not path.is_file():
        raise ReftError(missing)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or "syntax error"
        raise ReftError(
            f"{path} is not valid YAML{where} ({what}); fix the syntax and retry"
        ) from err
    except UnicodeDecodeError as err:
        raise ReftError(f"{path} is not UTF-8 text; save it as UTF-8 YAML") from err


def _apply_override(data: dict[str, Any], text: str) -> str | None:
    """Set one dotted `key=value` in `data`, the value read as YAML; returns a problem or None."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        return "expected key=value, for example train.learning_rate=1e-3"
    problem = check_path(RunConfig, key)
    if problem and "." not in key:
        key, problem = _full_path(key, problem)
    if problem:
        return problem
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return f"{raw!r} is not a valid YAML value"
    *parents, last = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part, {}), dict):
            return None  # the file's value there is not a mapping; validation reports it
        node = node.setdefault(part, {})
    node[last] = value
    return None


def _section_fields() -> dict[str, list[str]]:
    """Each setting name -> the full dotted paths that end in it (`learning_rate` -> train.…)."""
    found: dict[str, list[str]] = {}
    hints = get_type_hints(RunConfig)
    for section in dataclasses.fields(RunConfig):
        kind = hints[section.name]
        if dataclasses.is_dataclass(kind):
            for f in dataclasses.fields(kind):
                found.setdefault(f.name, []).append(f"{section.name}.{f.name}")
    return found


def _full_path(key: str, problem: str) -> tuple[str, str | None]:
    """An HF-style flat key (`learning_rate`) as the one full path it names, said on stderr; a
    misspelled one gets the closest full path as its suggestion."""
    paths = _section_fields()
    if len(paths.get(key, [])) == 1:
        (path,) = paths[key]
        print(f"note: {key} is {path}", file=sys.stderr)
        return path, None
    if key in paths:
        return key, f"{key} is ambiguous; write one of {', '.join(paths[key])}"
    close = difflib.get_close_matches(key, list(paths), n=1)
    if close and len(paths[close[0]]) == 1:
        return key, f"{key}: unknown key; did you mean {paths[close[0]][0]}?"
    return key, problem
