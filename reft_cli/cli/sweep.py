"""`reft sweep CONFIG --space SPACE.yaml`: a hyperparameter search with Optuna (the `sweep` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import config_path, console


def sweep(
    config: Path = typer.Argument(..., help="The base YAML config, e.g. configs/glue-mini.yaml."),
    space: Path = typer.Option(
        ..., "--space", help="Search space YAML: key: {low, high} or {choices}."
    ),
    trials: int = typer.Option(10, "--trials", min=1, help="Trials the study should hold in all."),
    study: str | None = typer.Option(
        None, "--study", help="Study name (default: the config's file name)."
    ),
    storage: Path | None = typer.Option(
        None, "--storage", help="SQLite file (default: OUT/study.db)."
    ),
    budget_minutes: float | None = typer.Option(
        None,
        "--budget-minutes",
        min=0,
        help="Start no new trial after this many minutes (a running trial finishes).",
    ),
    prune: bool = typer.Option(
        True, "--prune/--no-prune", help="Stop trials trailing the median at an evaluation."
    ),
    out: Path = typer.Option(
        Path("out/sweep"), "--out", help="Trials, best.yaml, sweep.md, plots."
    ),
) -> None:
    """Search CONFIG's settings over SPACE, scoring each trial on the selection set only.

    The SQLite storage is the study's record: the same command again continues it up to
    --trials. Writes OUT/best.yaml (runnable by reft train), OUT/sweep.md and PNG plots.

    Examples:
      reft sweep configs/glue-mini.yaml --space space.yaml --trials 8 --out out/sweep-glue
      reft sweep configs/glue-mini.yaml --space space.yaml --trials 12 --out out/sweep-glue  # 4 more
    """
    from reft_cli.reproduce.sweep import SweepOptions, run_sweep

    options = SweepOptions(
        config_path(config), space, out, trials, study, storage, budget_minutes, prune
    )
    run_sweep(options, console)
