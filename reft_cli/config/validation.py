"""Generic validation of nested config dataclasses, driven by their fields and type hints.

A schema is a tree of dataclasses whose fields carry a type hint and, optionally, a check and an
expected-value text in `field(metadata=...)` (see `option`). `build` turns a dict read from YAML
into that tree, collecting every problem instead of stopping at the first, so that a user fixes a
config in one round. Each problem names the full key path, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from reft_cli.errors import ReftError

Check = Callable[[Any], "str | None"]
"""Returns None when the value is fine, else what was expected ("a positive number")."""

_INVALID = object()
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PLURALS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


class ConfigError(ReftError):
    """Every problem found in one config, so that all of them can be fixed in one go."""

    def __init__(self, problems: Sequence[str], source: str) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in {self.source}"
        if count == 1:
            return f"{head}: {self.problems[0]}"
        return f"{head}: " + " ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))


def render_problems(err: ConfigError) -> Panel:
    """The problems as a bulleted list in one panel, for the CLI to print instead of a traceback."""
    count = len(err.problems)
    lines = [Text.assemble(("• ", "bold red"), problem) for problem in err.problems]
    title = f"{count} problem{'s' if count != 1 else ''} in {err.source}"
    return Panel(
        Group(*lines), title=Text(title, style="bold"), title_align="left", border_style="red"
    )


def option(default: Any, check: Check | None = None, expected: str | None = None) -> Any:
    """A dataclass field: its default (copied when mutable), a value check, an expected text."""
    metadata = {"check": check, "expected": expected}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rule(test: Callable[[Any], bool], expected: str) -> Check:
    """A check from a predicate and the text that says what it wants."""
    return lambda value: None if test(value) else expected


POSITIVE = rule(lambda v: v > 0, "a positive number")
POSITIVE_INT = rule(lambda v: v >= 1, "a positive integer")
NON_NEGATIVE = rule(lambda v: v >= 0, "a number >= 0")
UNIT_INTERVAL = rule(lambda v: 0 <= v <= 1, "a number between 0 and 1")


def one_of(choices: Iterable[str] | Callable[[], Iterable[str]]) -> Check:
    """The value must be one of `choices`, read when checking so that registries can grow."""

    def check(value: Any) -> str | None:
        options = list(choices() if callable(choices) else choices)
        if value in options:
            return None
        return f"one of {', '.join(options)}" + did_you_mean(value, options)

    return check


def did_you_mean(value: Any, options: Iterable[str], prefix: str = "") -> str:
    """`; did you mean X?` for the closest option, or nothing when none is close."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(options), n=1)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def show(value: Any) -> str:
    """A value as the user wrote it in YAML, kept short so each problem stays on one line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """Dataclass `cls` built from `data`; problems are appended and bad values left at defaults."""
    if not isinstance(data, dict):
        problems.append(f"{where}: {show(data)} is not allowed; expected a mapping of settings")
        return cls()
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(_unknown_key(where, str(key), fields))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{where}.{name}" if where else name
        value = data[name]
        if dataclasses.is_dataclass(hints[name]):
            values[name] = build(hints[name], value, path, problems)
            continue
        problem = _field_problem(value, hints[name], f)
        if problem:
            problems.append(f"{path}: {show(value)} is not allowed; expected {problem}")
        else:
            values[name] = coerce(value, hints[name])
    built = cls(**values)
    conflicts = getattr(built, "conflicts", None)  # a section's checks of fields against each other
    if conflicts is not None:
        problems.extend(conflicts())
    return built


def check_path(cls: type, path: str) -> str | None:
    """None when dotted `path` names a setting of schema `cls` (or a key inside a mapping one)."""
    parts = path.split(".")
    node: Any = cls
    for i, part in enumerate(parts):
        done = ".".join(parts[:i])
        if get_origin(node) is dict:  # a mapping setting takes any key, one level deep
            node = get_args(node)[1]
            continue
        if not dataclasses.is_dataclass(node):
            return f"{done} has no setting {part!r}"
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return _unknown_key(done, part, fields)
        node = get_type_hints(node)[part]
    return None


def coerce(value: Any, hint: Any) -> Any:
    """`value` as type `hint`, or _INVALID. Ints never accept bools; floats accept numeric strings
    because YAML 1.1 reads `1e-3` (no dot) as a string."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        for option_hint in args:
            out = coerce(value, option_hint)
            if out is not _INVALID:
                return out
        return _INVALID
    if origin is Literal:
        return value if isinstance(value, str) and value in args else _INVALID
    if origin is list:
        if not isinstance(value, list):
            return _INVALID
        items = [coerce(item, args[0]) for item in value]
        return _INVALID if any(item is _INVALID for item in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return _INVALID
        pairs = {coerce(k, args[0]): coerce(v, args[1]) for k, v in value.items()}
        return _INVALID if _INVALID in pairs or _INVALID in pairs.values() else pairs
    if hint is type(None):
        return None if value is None else _INVALID
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        return float(value) if ok else _INVALID
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    return value if isinstance(hint, type) and isinstance(value, hint) else _INVALID


def describe(hint: Any) -> str:
    """What a type hint accepts, in the words of a YAML user."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(args)
    if origin is list:
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    if origin is dict:
        return "a mapping of names to strings"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def _field_problem(value: Any, hint: Any, f: dataclasses.Field) -> str | None:
    """What was expected when `value` is wrong for field `f`, else None."""
    expected = f.metadata.get("expected")
    converted = coerce(value, hint)
    if converted is _INVALID:
        literals = [a for a in _flatten(hint) if get_origin(a) is Literal]
        choices = [c for lit in literals for c in get_args(lit)]
        return (expected or describe(hint)) + did_you_mean(value, choices)
    check = f.metadata.get("check")
    return None if check is None or converted is None else check(converted)


def _flatten(hint: Any) -> list[Any]:
    if get_origin(hint) in (Union, types.UnionType):
        return list(get_args(hint))
    return [hint]


def _unknown_key(where: str, key: str, fields: Iterable[str]) -> str:
    prefix = f"{where}." if where else ""
    hint = did_you_mean(key, fields, prefix)
    return f"{prefix}{key}: unknown key" + (hint or f"; expected one of {', '.join(fields)}")
