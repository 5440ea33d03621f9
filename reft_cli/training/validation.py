"""Evaluation during training: the mean eval loss over every process's share, and for
classification the GLUE metrics that select the best checkpoint."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase

from reft_cli.config.schema import RunConfig
from reft_cli.data.examples import Example, collate
from reft_cli.metrics import accuracy, f1_binary, matthews_corrcoef, pearson, spearman
from reft_cli.training.device_io import to_device
from reft_cli.training.loss import forward, loss_sum


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    examples: list[Example],
    tokenizer: PreTrainedTokenizerBase,
    run: RunConfig,
    head_on_targets: bool = False,
) -> dict[str, float]:
    """Mean eval loss over all processes' shares; for classification also the GLUE metrics
    (accuracy, F1 for two classes, Matthews correlation; Pearson/Spearman for regression).
    `head_on_targets` runs a causal LM's head on the response-predicting positions only."""
    model.eval()
    task_type = run.model.task_type
    size = run.train.per_device_eval_batch_size
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    totals = torch.zeros(2, device=accelerator.device)  # loss sum, count
    predictions: list[float] = []
    labels: list[float] = []
    regression = False
    for i in range(0, len(mine), size):
        batch = collate(mine[i : i + size], tokenizer.pad_token_id)
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            logits, targets = forward(model, batch, task_type, head_on_targets)
        summed, count = loss_sum(logits, targets, task_type)
        totals += torch.stack([summed.float(), count.float()])
        if task_type == "seq_cls":
            regression = logits.shape[-1] == 1
            predicted = logits.squeeze(-1) if regression else logits.argmax(-1)
            predictions += predicted.float().tolist()
            labels += batch["labels"].float().tolist()
    totals = accelerator.reduce(totals, "sum")
    metrics = {"eval_loss": (totals[0] / totals[1].clamp(min=1)).item()}
    if task_type == "seq_cls":
        predictions = [p for part in gather_object([predictions]) for p in part]
        labels = [g for part in gather_object([labels]) for g in part]
        scores = _classification_metrics(predictions, labels, regression)
        metrics.update({f"eval_{k}": v for k, v in scores.items()})
    return metrics


def _classification_metrics(
    predictions: list[float], labels: list[float], regression: bool
) -> dict[str, float]:
    if regression:
        return {"pearson": pearson(predictions, labels), "spearmanr": spearman(predictions, labels)}
    preds, gold = [int(p) for p in predictions], [int(g) for g in labels]
    out = {
        "accuracy": accuracy(preds, gold),
        "matthews_correlation": matthews_corrcoef(preds, gold),
    }
    if set(gold) | set(preds) <= {0, 1}:
        out["f1"] = f1_binary(preds, gold)
    return out
