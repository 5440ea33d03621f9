"""`reft export`: write an adapter in pyreft's layout or as a hub folder."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import console


def export(
    adapter: Path = typer.Option(..., "--adapter", help="Adapter folder written by reft."),
    format: str = typer.Option(..., "--format", help="pyreft (pyreft's layout) or hub."),
    out: Path = typer.Option(..., "--out", help="New folder to write (must not exist)."),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Then upload OUT to this hub repository (user/name)."
    ),
    license: str | None = typer.Option(
        None, "--license", help="License for the card (default: the base model's, when known)."
    ),
) -> None:
    """Write an adapter in pyreft's layout, or as a model-hub folder with a model card.

    Examples:
      reft export --adapter out/emoji --format pyreft --out out/emoji-pyreft
      reft export --adapter out/emoji --format hub --out out/emoji-hub
      reft export --adapter out/emoji --format hub --out out/emoji-hub --push-to-hub me/emoji-reft
    """
    from reft_cli.interop.export import export_adapter

    result = export_adapter(adapter, format, out, push_to_hub, license)
    console.print("\n".join(result.lines()), highlight=False, markup=False)
