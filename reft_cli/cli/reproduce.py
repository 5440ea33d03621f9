"""`reft reproduce RECIPE`: train and evaluate a recipe's runs, then report."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import console


def reproduce_(
    recipe: Path = typer.Argument(..., help="A recipe YAML, e.g. recipes/offline-glue.yaml."),
    only: str | None = typer.Option(None, "--only", help="Comma-separated runs to do now."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the recipe, show the plan, exit."),
    force: bool = typer.Option(False, "--force", help="Run a GPU recipe on a machine without one."),
) -> None:
    """Train and evaluate a recipe's runs, then write report.md/.json/.png; exit 1 on a miss.

    Finished runs are kept and interrupted ones resume, so running it again picks up where it
    stopped.

    Examples:
      reft reproduce recipes/offline-glue.yaml
      reft reproduce recipes/offline-commonsense.yaml --only loreft --dry-run
    """
    from reft_cli.reproduce.recipes import load_recipe
    from reft_cli.reproduce.runner import reproduce

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    report = reproduce(load_recipe(recipe), console, names, dry_run=dry_run, force=force)
    if report is not None and report.failed:
        console.print(f"[bold red]{len(report.failed)} expectation(s) missed[/]")
        raise typer.Exit(1)
