"""The one exception type users see: its message is a single line saying what is wrong and what to do."""

from __future__ import annotations

import re
from collections.abc import Iterable


class ReftError(Exception):
    """A problem with the user's input (config, files, adapter); the CLI prints it without a traceback."""


def first_line(err: BaseException) -> str:
    """A library error's first line, whitespace collapsed, to quote inside a one-line ReftError."""
    text = str(err).strip()
    return re.sub(r"\s+", " ", text.splitlines()[0]) if text else type(err).__name__


def check_choice(what: str, value: object, choices: Iterable[str]) -> None:
    """Refuse a value outside `choices`, listing them: one wording for every named option."""
    choices = list(choices)
    if value not in choices:
        raise ReftError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
