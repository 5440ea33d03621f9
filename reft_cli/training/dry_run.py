"""`reft train --dry-run`: show what a run would do — config, size, and two examples — then stop."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from reft_cli.data.examples import Example
from reft_cli.engine.reft_model import ReftModel
from reft_cli.training.setup import Setup


def show(setup: Setup, console: Console) -> None:
    console.print(Panel(Syntax(setup.run.dump_yaml(), "yaml"), title="resolved config"))
    trainable, head, total = setup.model.count_parameters()
    where = (
        f"in {len(setup.model.reft_config.interventions)} intervention sites"
        if isinstance(setup.model, ReftModel)
        else f"of {setup.model.describe()}"
    )
    line = (
        f"trainable parameters: {trainable:,} ({100 * trainable / total:.4f}% of {total:,}) {where}"
    )
    console.print(line + (f"; classification head: {head:,}" if head else ""))
    data = setup.data
    console.print(
        f"examples: {len(data.train)} train, {len(data.eval) if data.eval else 0} eval; "
        f"dropped as longer than max_length: {data.dropped_train + data.dropped_eval}"
    )
    legend = Text.assemble(("prompt", "cyan"), " · ", ("response", "green"))
    if isinstance(setup.model, ReftModel):
        legend.append_text(Text.assemble(" · ", ("intervened", "bold black on yellow")))
    console.print(legend)
    for example in data.train[:2]:
        console.print(Panel(render_example(setup, example), title=f"example {example.example_id}"))


def render_example(setup: Setup, example: Example) -> Text:
    """The example's tokens, coloured by role, with the intervention positions highlighted."""
    tokenizer, model = setup.tokenizer, setup.model
    chosen: set[int] = set()  # LoRA edits no particular position
    if isinstance(model, ReftModel):
        ids = torch.tensor([example.input_ids])
        positions = model.positions_for(torch.tensor([example.prompt_length]), torch.ones_like(ids))
        chosen = {
            int(i)
            for p in positions.values()
            for i, m in zip(p.index[0], p.mask[0], strict=True)
            if m
        }
    styles = [
        "bold black on yellow" if t in chosen else "cyan" if t < example.prompt_length else "green"
        for t in range(len(example.input_ids))
    ]
    text, start = Text(), 0
    for t in range(1, len(styles) + 1):  # decode runs of one style together: emoji span tokens
        if t == len(styles) or styles[t] != styles[start]:
            text.append(tokenizer.decode(example.input_ids[start:t]), style=styles[start])
            start = t
    return text
