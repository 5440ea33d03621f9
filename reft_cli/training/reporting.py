"""What a training run shows and leaves behind: the progress bar, the log, the plot, the summary.

Only the main process reports; everything here is called behind `accelerator.is_main_process`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def progress_bar(console: Console, disable: bool) -> Progress:
    """Step, epoch, loss, lr, it/s and ETA on one line."""
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("lr {task.fields[lr]}"),
        TextColumn("{task.fields[speed]} it/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def progress_line(entry: dict[str, Any], total: int, elapsed: float, done_before: int) -> str:
    """A logged step as one plain line, for logs without a terminal (CI, nohup, schedulers),
    where the live bar draws nothing until the end."""
    step = entry["step"]
    rate = (step - done_before) / elapsed if elapsed > 0 and step > done_before else 0.0
    eta = f"{(total - step) / rate:.0f}s" if rate else "?"
    loss = entry.get("loss")
    shown = f"{loss:.4f}" if isinstance(loss, float) else "—"
    return (
        f"train step {step}/{total} epoch {entry.get('epoch', 0):.2f} loss {shown} "
        f"lr {entry.get('lr', 0):.2e} {rate:.2f} it/s ETA {eta}"
    )


class TrainerLog:
    """`trainer_log.jsonl`: one JSON object per logged step or evaluation, appended as it happens."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        if (
            keep_until_step is not None and path.is_file()
        ):  # resuming: drop lines past the checkpoint
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [entry for entry in lines if entry.get("step", 0) <= keep_until_step]
            path.write_text("".join(json.dumps(entry) + "\n" for entry in kept))

    def write(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(entries: list[dict[str, Any]], path: Path) -> bool:
    """The training (and eval) loss over steps as a PNG; False when there is nothing to plot."""
    train = [(e["step"], e["loss"]) for e in entries if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in entries if "eval_loss" in e]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return True


@dataclass
class RunSummary:
    """The facts the end-of-run table, the model card and `eval_results` share."""

    seconds: float
    steps: int
    epochs: float
    final_loss: float | None
    trainable_parameters: int
    head_parameters: int
    model_parameters: int
    adapter_dir: Path
    best_checkpoint: Path | None = None
    best_metric: float | None = None

    def table(self) -> Table:
        table = Table(title="reft train", show_header=False)
        table.add_row("wall time", f"{self.seconds:.1f} s")
        table.add_row("optimizer steps", f"{self.steps} ({self.epochs:g} epochs)")
        if self.final_loss is not None:
            table.add_row("final loss", f"{self.final_loss:.4f}")
        percent = 100 * self.trainable_parameters / self.model_parameters
        table.add_row(
            "trainable parameters", f"{self.trainable_parameters:,} ({percent:.4f}% of the model)"
        )
        if self.head_parameters:
            table.add_row("classification head", f"{self.head_parameters:,}")
        if self.best_checkpoint is not None:
            table.add_row("best checkpoint", f"{self.best_checkpoint} ({self.best_metric:.4f})")
        table.add_row("adapter", str(self.adapter_dir))
        return table


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as flat `section.key` scalars, the shape experiment trackers accept."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
