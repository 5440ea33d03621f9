"""The `reft` command line: the typer app, its subcommands, and the entry point.

Each subcommand lives in its own module, parses its arguments and calls one function.
"""

from __future__ import annotations

import os
import sys

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


app.command(context_settings={"allow_extra_args": False})(train.train)
app.add_typer(configs.configs_app, name="configs")
app.command()(smoke.smoke)
app.command()(generate.generate)
app.command("eval")(evaluate.eval_)
app.command("export")(export.export)
app.command("import")(import_pyreft.import_)
app.command("reproduce")(reproduce.reproduce_)
app.command("serve")(serve.serve)
app.command("sweep")(sweep.sweep)


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
