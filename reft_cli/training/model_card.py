"""The `README.md` model card written beside every adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reft_cli.config.schema import RunConfig
from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import CARD_NAME, LOG_NAME, PLOT_NAME, TRAINING_CONFIG_NAME
from reft_cli.training.reporting import RunSummary

if TYPE_CHECKING:
    from reft_cli.engine.lora import LoraModel
    from reft_cli.engine.lora_config import LoraAdapterConfig


@dataclass(frozen=True)
class CardKind:
    """What a ReFT card and a LoRA card differ in; `write_card` writes the rest the same way."""

    title: str  # "ReFT adapter", "LoRA adapter"
    what: str  # the sentence before "on `<dataset>`."
    method_rows: list[str]  # the table rows that describe the method
    usage: str  # the Python that loads the adapter


def write_model_card(
    directory: Path, run: RunConfig, reft: ReftConfig, summary: RunSummary
) -> None:
    """The card of a ReFT (or linear probe) run."""
    sites = reft.interventions
    layers = ", ".join(str(s.layer) for s in sites)
    if sites:
        what = f"A {sites[0].type} adapter trained with reft"
        rows = [
            f"| interventions | {sites[0].type}, rank {sites[0].rank}, {sites[0].component} of layers {layers} |",
            f"| positions | `{reft.positions}` ({'tied' if reft.share_weights else 'untied'} weights) |",
        ]
    else:  # method: probe
        what, rows = "A linear probe (the classification head alone) trained with reft", []
    usage = f'from reft_cli import ReftModel\n\nmodel = ReftModel.from_pretrained("{directory}")'
    write_card(directory, run, reft, summary, CardKind("ReFT adapter", what, rows, usage))


def write_lora_card(directory: Path, run: RunConfig, model: LoraModel, summary: RunSummary) -> None:
    """The card of a LoRA baseline run: the same table, with the LoRA settings."""
    usage = (
        "from reft_cli import LoraModel\n\n"
        f'model = LoraModel.from_pretrained("{directory}")  # or peft.PeftModel.from_pretrained'
    )
    kind = CardKind(
        "LoRA adapter",
        "A LoRA baseline trained with reft (through PEFT)",
        [f"| method | {model.describe()} |"],
        usage,
    )
    write_card(directory, run, model.reft_config, summary, kind)


def write_card(
    directory: Path,
    run: RunConfig,
    config: ReftConfig | LoraAdapterConfig,
    summary: RunSummary,
    kind: CardKind,
) -> None:
    """The `README.md` of an adapter of either kind: a table of what it is and how it trained."""
    percent = 100 * summary.trainable_parameters / summary.model_parameters
    head = f"; classification head {summary.head_parameters:,}" if summary.head_parameters else ""
    lines = [
        f"# {kind.title} for {config.base_model}",
        "",
        f"{kind.what} on `{run.data.dataset}`.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{config.base_model}` |",
        f"| task | {config.task_type} |",
        *kind.method_rows,
        f"| trainable parameters | {summary.trainable_parameters:,} ({percent:.4f}% of {summary.model_parameters:,}){head} |",
        f"| prompt template | `{config.prompt_template!r}` |",
        *_training_rows(run, summary),
        *_use(kind.usage),
    ]
    atomic_write_text(directory / CARD_NAME, "\n".join(lines))


def _training_rows(run: RunConfig, summary: RunSummary) -> list[str]:
    train = run.train
    rows = [
        f"| training | {summary.steps} steps, {summary.epochs:g} epochs, lr {train.learning_rate:g}, "
        f"batch {train.per_device_train_batch_size} × {train.gradient_accumulation_steps}, "
        f"{train.lr_scheduler_type} schedule, seed {train.seed} |",
    ]
    if summary.final_loss is not None:
        rows.append(f"| final training loss | {summary.final_loss:.4f} |")
    if summary.best_metric is not None:
        rows.append(
            f"| best {train.metric_for_best_model or 'eval_loss'} | {summary.best_metric:.4f} |"
        )
    return rows


def _use(code: str) -> list[str]:
    return [
        "",
        f"![loss curve]({PLOT_NAME})",
        "",
        "## Use",
        "",
        "```python",
        code,
        "```",
        "",
        f"The full training config is in `{TRAINING_CONFIG_NAME}`; per-step logs in `{LOG_NAME}`.",
        "",
    ]
