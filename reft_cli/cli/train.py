"""`reft train CONFIG [key=value ...]`: train an adapter."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import config_path, console


def train(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/emoji.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides with dotted paths."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build everything, show it, then exit."),
) -> None:
    """Train a ReFT adapter as CONFIG says; the output folder is the adapter.

    Examples:
      reft train configs/emoji.yaml
      reft train configs/emoji.yaml train.num_train_epochs=40 train.output_dir=out/emoji-40
      reft train configs/emoji.yaml --dry-run
    """
    from reft_cli.config.reader import load_config

    run = load_config(config_path(config), overrides or [])
    if dry_run:
        from reft_cli.training.dry_run import show
        from reft_cli.training.setup import build

        show(build(run), console)
        return
    from reft_cli.training.trainer import Trainer

    trainer = Trainer(run, console)
    try:
        summary = trainer.train()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if trainer.main:
        console.print(summary.table())
