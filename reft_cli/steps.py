"""The loss of one micro-batch, as a sum and a count, so a step can normalize over all its tokens.

Kept apart from the loop and the data so that length-aware batching and cached frozen states can
replace how a micro-batch is computed without touching how a step is assembled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reft_cli.data import IGNORE_INDEX


def forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The logits of one micro-batch with the interventions applied."""
    return model(
        batch["input_ids"], batch["attention_mask"], prompt_lengths=batch["prompt_lengths"]
    ).logits


def loss_sum(logits: Tensor, labels: Tensor, task_type: str) -> tuple[Tensor, Tensor]:
    """(sum of per-token or per-row losses, how many were summed), in fp32."""
    if task_type == "causal_lm":
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        total = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
        return total, keep.sum()
    logits = logits.float()
    if logits.shape[-1] == 1:  # regression
        total = F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
    else:
        total = F.cross_entropy(logits, labels, reduction="sum")
    return total, torch.tensor(labels.shape[0], device=labels.device)
