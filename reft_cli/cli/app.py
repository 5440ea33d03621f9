"""The `reft` command line: the typer app, its subcommands, and the entry point.

Each subcommand lives in its own module, parses its arguments and calls one function.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.text import Text

from reft_cli.cli import (
    configs,
    evaluate,
    export,
    generate,
    import_pyreft,
    reproduce,
    serve,
    smoke,
    sweep,
    train,
)
from reft_cli.cli.common import error_console
from reft_cli.config.validation import ConfigError, render_problems
from reft_cli.errors import ReftError

app = typer.Typer(
    help="Representation Finetuning (ReFT) of language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Representation Finetuning (ReFT) of language models."""


def _help(command: Callable[..., None]) -> str:
    """A command's docstring with each prose paragraph on one line. typer's rich help keeps a
    docstring's line breaks, so a paragraph wrapped in the source would break again, mid-line, at
    the terminal's width. Paragraphs with indented lines (examples) stay as written."""
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(p if "\n " in p else " ".join(p.split()) for p in paragraphs)


def _add(command: Callable[..., None], name: str, **settings: Any) -> None:
    app.command(name, help=_help(command), **settings)(command)


_add(train.train, "train", context_settings={"allow_extra_args": False})
app.add_typer(configs.configs_app, name="configs")
_add(smoke.smoke, "smoke")
_add(generate.generate, "generate")
_add(evaluate.eval_, "eval")
_add(export.export, "export")
_add(import_pyreft.import_, "import")
_add(reproduce.reproduce_, "reproduce")
_add(serve.serve, "serve")
_add(sweep.sweep, "sweep")


def main() -> None:
    """Console entry point: user errors print one line to stderr and exit 2, without a traceback."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except ConfigError as err:
        error_console.print(render_problems(err))
        sys.exit(2)
    except ReftError as err:
        error_console.print(Text.assemble(("error: ", "bold red"), str(err)), soft_wrap=True)
        sys.exit(2)
