"""`reft smoke`: an install self-check on a real model."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import console
from reft_cli.errors import ReftError


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
    """Check an install end to end: train the emoji config a few steps, save, reload, compare.

    Example: reft smoke --steps 10 --out out/smoke
    """
    from reft_cli.reproduce.smoke import run_smoke, summary

    result = run_smoke(
        model, layers, rank, positions, steps, learning_rate, out, overwrite, console
    )
    console.print(summary(result, out))
    if not result.passed:
        raise ReftError(
            "smoke check failed: training did not lower the loss or reloading changed outputs"
        )
