"""`reft smoke`: a self-check of an install on a real model, through the same code `reft train` runs.

Trains the shipped emoji config for a few steps (with the model, layers, rank and positions asked
for), then reloads the saved adapter the way `reft eval` does and checks that the reloaded adapter
reproduces the trained one's logits bit for bit and that training lowered the loss.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from reft_cli.config.reader import load_config
from reft_cli.config.schema import ModelConfig
from reft_cli.config.shipped import find_config
from reft_cli.config.validation import ConfigError
from reft_cli.data.examples import collate
from reft_cli.engine.folder_names import LOG_NAME
from reft_cli.errors import ReftError
from reft_cli.evaluation.predict import load_for_eval
from reft_cli.training.reporting import TrainerLog
from reft_cli.training.run_dir import foreign_entries, holds_a_run
from reft_cli.training.trainer import Trainer


@dataclass
class SmokeResult:
    loss_before: float
    loss_after: float
    reload_identical: bool
    seconds: float

    @property
    def passed(self) -> bool:
        return self.reload_identical and self.loss_after < self.loss_before


def run_smoke(
    model_name: str,
    layers: str,
    rank: int,
    positions: str,
    steps: int,
    learning_rate: float,
    out: Path,
    overwrite: bool,
    console: Console,
) -> SmokeResult:
    if holds_a_run(out) and not overwrite:
        raise ReftError(f"{out} already holds an adapter; choose another --out or pass --overwrite")
    if foreign_entries(out) and not overwrite:
        raise ReftError(
            f"{out} is not empty and holds no adapter; choose a new or empty --out or pass --overwrite"
        )
    start = time.perf_counter()
    overrides = {
        "model.name_or_path": model_name,
        "intervention.layers": layers,
        "intervention.rank": rank,
        "intervention.positions": positions,
        "train.max_steps": steps,
        "train.learning_rate": learning_rate,
        "train.logging_steps": 1,
        "train.save_steps": steps,
        "train.output_dir": str(out),
        "train.overwrite_output_dir": overwrite,
    }
    try:
        run = load_config(
            find_config("emoji"), [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
        )
    except ConfigError as err:  # the options, not the shipped file, are what the user gave
        raise ReftError("; ".join(err.problems)) from err
    trainer = Trainer(run, console)
    trainer.train()
    losses = [entry["loss"] for entry in TrainerLog(out / LOG_NAME).entries() if "loss" in entry]

    batch = collate(trainer.data.train[:4], trainer.setup.tokenizer.pad_token_id)
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    reloaded = load_for_eval(out, ModelConfig())
    with torch.no_grad():
        before = trained(
            batch["input_ids"], batch["attention_mask"], prompt_lengths=batch["prompt_lengths"]
        ).logits
        after = reloaded.logits(batch)
    return SmokeResult(
        losses[0], losses[-1], torch.equal(before, after), time.perf_counter() - start
    )


def summary(result: SmokeResult, out: Path) -> Table:
    table = Table(title="reft smoke", show_header=False)
    table.add_row(
        "loss (first step → last step)", f"{result.loss_before:.4f} → {result.loss_after:.4f}"
    )
    table.add_row(
        "reloaded adapter reproduces outputs", "yes" if result.reload_identical else "[red]NO[/]"
    )
    table.add_row("adapter", str(out))
    table.add_row("wall time", f"{result.seconds:.1f} s")
    return table
