"""`reft smoke`: an end-to-end check of the engine on a real model, until `reft train` exists.

Wraps the model, trains a few steps on a fixed batch of chat examples, saves the adapter, reloads it
and checks the reloaded adapter reproduces the trained one bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from transformers import PreTrainedTokenizerBase

from reft_cli.adapter_config import CONFIG_NAME, ReftConfig
from reft_cli.base_models import load_model, load_tokenizer
from reft_cli.errors import ReftError
from reft_cli.model import ReftModel, get_reft_model
from reft_cli.positions import PositionSpec

EXAMPLES = [
    ("Who are you?", "🤖💬🌐🧠"),
    ("What's 2+2?", "🔢➕🔢➡️🍀"),
    ("Why is the sky blue?", "🌍🛡️☀️➡️🔵🌌"),
    ("What should I eat for dinner?", "🍝🥗🍣"),
]


@dataclass
class SmokeResult:
    loss_before: float
    loss_after: float
    reload_identical: bool
    seconds: float


def encode(
    tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]
) -> dict[str, torch.Tensor]:
    """Right-padded chat-formatted batch with loss on the response tokens only."""
    rows, prompt_lengths = [], []
    for prompt, response in pairs:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)[
            "input_ids"
        ]
        rows.append((prompt_ids, response_ids))
        prompt_lengths.append(len(prompt_ids))
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        mask[i, : len(p) + len(r)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "prompt_lengths": torch.tensor(prompt_lengths),
    }


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
    if (out / CONFIG_NAME).exists() and not overwrite:
        raise ReftError(f"{out} already holds an adapter; choose another --out or pass --overwrite")
    PositionSpec.parse(positions)  # fail on a typo before spending time on the model
    start = time.perf_counter()
    torch.manual_seed(0)
    with console.status(f"loading {model_name}"):
        tokenizer = load_tokenizer(model_name)
        base = load_model(model_name)
    num_layers = base.config.get_text_config().num_hidden_layers
    config = ReftConfig.for_layers(
        layers, num_layers, rank=rank, positions=positions, base_model=model_name
    )
    config.tokenizer = {"padding_side": tokenizer.padding_side, "pad_token": tokenizer.pad_token}
    model = get_reft_model(base, config)
    interventions, _, total = model.count_parameters()
    console.print(
        f"[bold]{model_name}[/]: {len(config.interventions)} × {config.interventions[0].type} "
        f"(rank {rank}, positions {positions}) — {interventions:,} trainable parameters, "
        f"{100 * interventions / total:.4f}% of {total:,}"
    )

    batch = encode(tokenizer, EXAMPLES)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=learning_rate
    )
    model.train()
    losses = []
    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=steps, loss="—")
        for _ in range(steps):
            optimizer.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress.update(task, advance=1, loss=f"{losses[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        final = model(**batch)
    model.save_pretrained(out)
    reloaded = ReftModel.from_pretrained(out, model.unload())
    with torch.no_grad():
        again = reloaded(**batch)
    return SmokeResult(
        losses[0],
        final.loss.item(),
        torch.equal(final.logits, again.logits),
        time.perf_counter() - start,
    )


def summary(result: SmokeResult, out: Path) -> Table:
    table = Table(title="reft smoke", show_header=False)
    table.add_row(
        "loss (first step → after training)", f"{result.loss_before:.4f} → {result.loss_after:.4f}"
    )
    table.add_row(
        "reloaded adapter reproduces outputs", "yes" if result.reload_identical else "[red]NO[/]"
    )
    table.add_row("adapter", str(out))
    table.add_row("wall time", f"{result.seconds:.1f} s")
    return table
