"""`reft configs list|show|copy`: the configs that ship with reft."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import console

configs_app = typer.Typer(help="The configs that ship with reft.", no_args_is_help=True)


@configs_app.command("list")
def configs_list() -> None:
    """List the shipped configs with the first line of each header."""
    from reft_cli.config.shipped import shipped_configs

    for name, summary in shipped_configs():
        console.print(f"[bold]{name}[/]  {summary}", highlight=False)


@configs_app.command("show")
def configs_show(name: str = typer.Argument(..., help="A name from `reft configs list`.")) -> None:
    """Print a shipped config."""
    from reft_cli.config.shipped import read_config

    console.print(read_config(name), highlight=False, markup=False)


@configs_app.command("copy")
def configs_copy(
    name: str = typer.Argument(..., help="A name from `reft configs list`."),
    dest: Path = typer.Argument(..., help="Where to write it (a file or a folder)."),
) -> None:
    """Copy a shipped config to edit it; refuses to overwrite an existing file."""
    from reft_cli.config.shipped import copy_config

    console.print(f"wrote {copy_config(name, dest)}")
