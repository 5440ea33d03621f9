"""`reft import`: read a pyreft adapter folder into reft's format."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import console


def import_(
    pyreft_dir: Path = typer.Argument(..., help="Folder saved by pyreft's ReftModel.save."),
    out: Path = typer.Option(..., "--out", help="New reft adapter folder (must not exist)."),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Alias, hub id or folder of the model it was trained on."
    ),
    positions: str | None = typer.Option(
        None, "--positions", help="Prompt positions it was trained with (default f1+l1)."
    ),
    share_weights: bool | None = typer.Option(
        None, "--share-weights/--no-share-weights", help="Tied or untied (default: from layout)."
    ),
    dropout: float | None = typer.Option(None, "--dropout", help="Dropout (default 0)."),
    act_fn: str | None = typer.Option(None, "--act-fn", help="Activation (default: none)."),
    task_type: str | None = typer.Option(
        None, "--task-type", help="causal_lm or seq_cls (default: seq_cls if a head is saved)."
    ),
) -> None:
    """Read a pyreft adapter folder into reft's format; says which settings it had to assume.

    Examples:
      reft import pyreft-out --base-model meta-llama/Llama-2-7b-hf --out out/imported
      reft import pyreft-out --base-model ./base --out out/imported --positions f7+l7 --act-fn gelu
    """
    from reft_cli.interop.pyreft_import import ImportOptions, import_pyreft

    result = import_pyreft(
        ImportOptions(
            pyreft_dir, out, base_model, positions, share_weights, dropout, act_fn, task_type
        )
    )
    console.print("\n".join(result.lines()), highlight=False, markup=False)
