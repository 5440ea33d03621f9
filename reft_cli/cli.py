"""The `reft` command line. Each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from reft_cli.errors import ReftError

app = typer.Typer(
    help="Representation Finetuning (ReFT) of language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """Representation Finetuning (ReFT) of language models."""


@app.command()
def smoke(
    model: str = typer.Option("smollm2-135m-instruct", help="Alias, hub id or local folder."),
    layers: str = typer.Option("15", help="Layers to intervene on: 'all', '15' or '2;10;18'."),
    rank: int = typer.Option(4, min=1, help="Rank r of each intervention."),
    positions: str = typer.Option("l1", help="Prompt positions, e.g. l1, f1+l1, f7+l7."),
    steps: int = typer.Option(20, min=1, help="Optimizer steps on the fixed batch."),
    learning_rate: float = typer.Option(4e-3, min=0.0, help="AdamW learning rate."),
    out: Path = typer.Option(Path("out/smoke"), help="Where to write the adapter."),
    overwrite: bool = typer.Option(False, help="Replace an adapter already in --out."),
) -> None:
    """Check the engine end to end: wrap, train a few steps, save, reload, compare.

    Example: reft smoke --steps 10 --out out/smoke
    """
    from reft_cli.smoke import run_smoke, summary

    result = run_smoke(
        model, layers, rank, positions, steps, learning_rate, out, overwrite, console
    )
    console.print(summary(result, out))
    if not result.reload_identical or not result.loss_after < result.loss_before:
        raise ReftError(
            "smoke check failed: training did not lower the loss or reloading changed outputs"
        )


def main() -> None:
    """Console entry point: user errors print one line and exit 2, without a traceback."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except ReftError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
