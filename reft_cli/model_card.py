"""The `README.md` model card written beside every adapter."""

from __future__ import annotations

from pathlib import Path

from reft_cli.adapter_config import ReftConfig
from reft_cli.adapter_io import atomic_write_text
from reft_cli.config import RunConfig
from reft_cli.reporting import PLOT_NAME, RunSummary


def write_model_card(
    directory: Path, run: RunConfig, reft: ReftConfig, summary: RunSummary
) -> None:
    sites = reft.interventions
    layers = ", ".join(str(s.layer) for s in sites)
    percent = 100 * summary.trainable_parameters / summary.model_parameters
    train = run.train
    lines = [
        f"# ReFT adapter for {reft.base_model}",
        "",
        f"A {sites[0].type} adapter trained with reft on `{run.data.dataset}`.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{reft.base_model}` |",
        f"| task | {reft.task_type} |",
        f"| interventions | {sites[0].type}, rank {sites[0].rank}, {sites[0].component} of layers {layers} |",
        f"| positions | `{reft.positions}` ({'tied' if reft.share_weights else 'untied'} weights) |",
        f"| trainable parameters | {summary.trainable_parameters:,} ({percent:.4f}% of {summary.model_parameters:,}) |",
        f"| prompt template | `{reft.prompt_template!r}` |",
        f"| training | {summary.steps} steps, {summary.epochs:g} epochs, lr {train.learning_rate:g}, "
        f"batch {train.per_device_train_batch_size} × {train.gradient_accumulation_steps}, "
        f"{train.lr_scheduler_type} schedule, seed {train.seed} |",
    ]
    if summary.final_loss is not None:
        lines.append(f"| final training loss | {summary.final_loss:.4f} |")
    if summary.best_metric is not None:
        lines.append(
            f"| best {train.metric_for_best_model or 'eval_loss'} | {summary.best_metric:.4f} |"
        )
    lines += [
        "",
        f"![loss curve]({PLOT_NAME})",
        "",
        "## Use",
        "",
        "```python",
        "from reft_cli import ReftModel",
        "",
        f'model = ReftModel.from_pretrained("{directory}")',
        "```",
        "",
        "The full training config is in `training_config.yaml`; per-step logs in `trainer_log.jsonl`.",
        "",
    ]
    atomic_write_text(directory / "README.md", "\n".join(lines))
