"""What every subcommand shares: the console it prints to and how it finds a config."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console()
error_console = Console(stderr=True)
"""Where user errors go: stderr, so they never mix into output a script reads from stdout."""


def config_path(config: Path) -> Path:
    """A config path, or the name of a shipped config (`emoji` or `emoji.yaml`)."""
    if config.exists():
        return config
    from reft_cli.config.shipped import find_config

    return find_config(str(config)) or config
