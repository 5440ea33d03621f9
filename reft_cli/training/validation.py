"""Evaluation during training: the mean eval loss over every process's share, for classification
the GLUE metrics, and for multiple-choice rows (data.mc_format) the accuracy of picking the likeliest
option, as `reft eval --scoring loglik` scores it: the metrics that select the best checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase

from reft_cli.config.schema import RunConfig
from reft_cli.data.examples import IGNORE_INDEX, Example, collate
from reft_cli.metrics import accuracy, f1_binary, matthews_corrcoef, pearson, spearman
from reft_cli.training.device_io import to_device
from reft_cli.training.loss import forward, loss_sum, next_token_targets


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
    option_scores: list[tuple[int, int, int, float]] = []  # (row, option, gold, log-likelihood)
    regression = False
    for i in range(0, len(mine), size):
        part = mine[i : i + size]
        batch = to_device(collate(part, tokenizer.pad_token_id), accelerator.device)
        with accelerator.autocast():
            logits, targets = forward(model, batch, task_type, head_on_targets)
        choices = [ex.choice for ex in part]
        if choices[0] is not None:
            nll = _example_nll(logits, targets, batch["labels"])
            option_scores += [
                (ex.example_id, option, gold, -value)
                for ex, (option, gold), value in zip(part, choices, nll.tolist(), strict=True)
            ]
            gold = torch.tensor([c[0] == c[1] for c in choices], device=nll.device)
            summed = (nll * gold).sum()
            count = ((next_token_targets(batch["labels"]) != IGNORE_INDEX).sum(-1) * gold).sum()
        else:
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
    if option_scores:
        scored = [s for part in gather_object([option_scores]) for s in part]
        metrics["eval_accuracy"] = choice_accuracy(scored)
    return metrics


def _example_nll(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) summed negative log-likelihood of each row's target tokens; `targets` is (B, T), or
    flattened to the target positions when the head ran on those only."""
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    if targets.dim() == 2:
        return per_token.view(targets.shape).sum(-1)
    rows = (next_token_targets(labels) != IGNORE_INDEX).nonzero()[:, 0]
    return torch.zeros(labels.shape[0], device=per_token.device).index_add_(0, rows, per_token)


def choice_accuracy(scored: list[tuple[int, int, int, float]]) -> float:
    """Share of rows whose likeliest option (first on ties) is the gold one; each entry is
    (row, option, gold, log-likelihood), as every process scored its share."""
    best: dict[int, tuple[float, int, int]] = {}
    for row, option, gold, value in sorted(scored):
        if row not in best or value > best[row][0]:
            best[row] = (value, option, gold)
    return sum(option == gold for _, option, gold in best.values()) / len(best)


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
