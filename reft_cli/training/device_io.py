"""What crosses between host and device in a training step, and when.

A step never waits for the device: batches go over asynchronously (from pinned memory on CUDA), and
the loss stays on the device, with a device-side record of the first non-finite one. The host reads
it back only at logging steps, before a checkpoint is written and at the end, so on an accelerator
the loop can collate and queue the next step while the current one computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bookkeeping the model never reads: the frozen-state cache looks examples up by it on the host.
HOST_KEYS = ("example_ids",)


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The model's inputs on `device`; on CUDA pinned first and copied without blocking the host
    (the caching host allocator keeps a pinned buffer alive until its copy is done)."""
    cuda = device.type == "cuda"
    return {
        k: v
        if k in HOST_KEYS
        else (v.pin_memory().to(device, non_blocking=True) if cuda else v.to(device))
        for k, v in batch.items()
    }


class LossWatch:
    """The latest step loss and the first non-finite one, both as device tensors."""

    def __init__(self, device: torch.device) -> None:
        self.last: Tensor | None = None
        self.bad_step = torch.zeros((), dtype=torch.float64, device=device)  # 0: none so far
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    def record(self, loss: Tensor, step: int) -> None:
        """Remember `loss` (a 0-d device tensor) of `step` (1-based) without reading it."""
        loss = loss.detach().double()
        first = (self.bad_step == 0) & ~torch.isfinite(loss)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss, self.bad_loss)
        self.last = loss

    def read(self) -> tuple[float | None, int, float]:
        """(latest loss, first non-finite step or 0, its loss), in one host read."""
        last = self.last if self.last is not None else torch.full_like(self.bad_loss, torch.nan)
        value, step, bad = torch.stack([last, self.bad_step, self.bad_loss]).tolist()
        return (value if self.last is not None else None), int(step), bad
