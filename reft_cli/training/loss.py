"""The loss of one micro-batch, as a sum and a count, so a step can normalize over all its tokens.

Kept apart from the loop and the data so that length-aware batching and cached frozen states can
replace how a micro-batch is computed without touching how a step is assembled. For causal LMs the
outputs and targets are aligned (position i predicts target i), so the lm head can run on the
positions that predict a response token and nowhere else.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reft_cli.data.examples import IGNORE_INDEX
from reft_cli.errors import ReftError
from reft_cli.training.fused_head import FusedHead


def next_token_targets(labels: Tensor) -> Tensor:
    """(B, T) labels → (B, T) targets: position i predicts label i + 1; the last predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def takes_logits_to_keep(base: nn.Module) -> bool:
    """Whether the base model's forward can run its head on selected positions only."""
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def cache_argument(base: nn.Module) -> str:
    """The name the base model's forward takes a KV cache by: newer transformers 5 releases renamed
    `past_key_values` to `cache` and warn on the old name, older ones know only the old."""
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def forward(
    model: nn.Module,
    batch: dict[str, Tensor],
    task_type: str = "causal_lm",
    head_on_targets: bool = False,
) -> tuple[Tensor, Tensor]:
    """(outputs, targets) of one micro-batch with the interventions applied.

    With `head_on_targets` (causal LM only), the head runs on the positions whose next token is a
    target, and both come back flattened to one row per target.
    """
    kwargs = {"prompt_lengths": batch["prompt_lengths"]}
    if task_type != "causal_lm":
        return model(batch["input_ids"], batch["attention_mask"], **kwargs).logits, batch["labels"]
    targets = next_token_targets(batch["labels"])
    if head_on_targets:
        keep = targets != IGNORE_INDEX
        kwargs["logits_to_keep"] = keep
        targets = targets[keep]
    logits = model(batch["input_ids"], batch["attention_mask"], **kwargs).logits
    check_selected(logits, targets)
    return logits, targets


def check_selected(logits: Tensor, targets: Tensor) -> None:
    """A model that takes `logits_to_keep` but slices its own way would misalign the loss."""
    if logits.shape[:-1] != targets.shape:
        raise ReftError(
            f"the model returned logits of shape {tuple(logits.shape)} for targets of shape "
            f"{tuple(targets.shape)}; it does not select positions as transformers' models do, "
            "so set train.lm_head_on_targets=false"
        )


def loss_sum(
    outputs: Tensor, targets: Tensor, task_type: str, fused: FusedHead | None = None
) -> tuple[Tensor, Tensor]:
    """(sum of per-token or per-row losses, how many were summed), in fp32. With `fused`, the
    outputs are what the model returned inside `fused.deferred()`: its final hidden states."""
    if fused is not None:
        return fused.loss(outputs, targets), (targets != IGNORE_INDEX).sum()
    if task_type == "causal_lm":
        # ignore_index instead of selecting rows: no copy of the (vocabulary-wide) logits.
        total = F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total, (targets != IGNORE_INDEX).sum()
    outputs = outputs.float()
    if outputs.shape[-1] == 1:  # regression
        total = F.mse_loss(outputs.squeeze(-1), targets.float(), reduction="sum")
    else:
        total = F.cross_entropy(outputs, targets, reduction="sum")
    return total, torch.tensor(targets.shape[0], device=targets.device)
