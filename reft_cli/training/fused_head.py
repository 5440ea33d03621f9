"""The causal LM's head and its cross-entropy in one pass, a chunk of positions at a time.

The head's logits are the largest tensor of a step (positions x vocabulary: 56 MB for 288
positions of SmolLM2), and the plain loss makes four of that size: the logits, their log-softmax
and the two gradients. On a CPU each such allocation is fresh pages from the system, and the
passes over them run from main memory. Here the base model runs with its head held back (it
returns the final hidden states where it would return logits), and the head and the loss run per
chunk of positions small enough to stay in cache: logits, log-sum-exp, the loss, and at once the
gradient with respect to the hidden states, softmax minus one-hot times the head's weight. The
backward pass only scales that gradient. Losses and gradients equal the plain path's (tested).

Used only where the head is a plain linear layer the model applies unchanged (checked once on a
few tokens, so a model that scales or caps its logits keeps the plain path) and is frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from reft_cli.data.examples import IGNORE_INDEX

# Logits held at once, per chunk. On a CPU they sit in one buffer kept for the whole run, laid out
# vocabulary-first (the products run faster that way and fresh pages cost more than the passes);
# on an accelerator the caching allocator keeps them, and only memory bounds them.
CHUNK_BYTES = {"cpu": 64 * 2**20}
DEVICE_CHUNK_BYTES = 512 * 2**20


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T + bias, targets), ignoring IGNORE_INDEX;
    the logits are computed transposed, (vocabulary, rows), into `work` when it is given."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows: int, work: Tensor | None):
        kind = hidden.device.type
        cast = torch.is_autocast_enabled(kind)
        dtype = torch.get_autocast_dtype(kind) if cast else weight.dtype  # the plain head's
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        with torch.autocast(kind, enabled=False):
            weight = weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)[:, None]
            for start in range(0, hidden.shape[0], rows):
                part = hidden[start : start + rows].to(dtype).t()
                if work is not None and dtype == torch.float32:
                    logits = torch.mm(weight, part, out=work[:, : part.shape[1]])
                else:
                    logits = (weight @ part).float()
                if bias is not None:
                    logits += bias
                wanted = targets[start : start + rows]
                valid = wanted != IGNORE_INDEX
                index = torch.where(valid, wanted, 0)[None]
                lse = torch.logsumexp(logits, dim=0)
                picked = logits.gather(0, index).squeeze(0)
                total += torch.where(valid, lse - picked, 0.0).sum()
                if grad is not None:  # d loss / d logits = softmax - one-hot, on valid rows
                    probs = logits.sub_(lse[None]).exp_()
                    probs.scatter_add_(0, index, -valid[None].to(probs.dtype))
                    probs.mul_(valid[None])
                    grad[start : start + rows] = probs.t().to(dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, upstream: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor, head: nn.Linear, targets: Tensor, work: Tensor | None = None
) -> Tensor:
    """The summed cross-entropy of `head(hidden)` against `targets`, in chunks of positions."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    rows = chunk_rows(head, hidden.device)
    return _LinearCrossEntropy.apply(
        hidden, head.weight, head.bias, targets.reshape(-1), rows, work
    )


def chunk_rows(head: nn.Linear, device: torch.device) -> int:
    """How many positions' logits one chunk holds."""
    budget = CHUNK_BYTES.get(device.type, DEVICE_CHUNK_BYTES)
    return max(1, budget // (4 * head.out_features))


class FusedHead:
    """Holds a causal LM's head back during a forward pass and applies it fused with the loss."""

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        frozen = isinstance(head, nn.Linear) and not any(p.requires_grad for p in head.parameters())
        self.head = head if frozen and _applied_plainly(base, head) else None
        self.work: Tensor | None = None

    @property
    def on(self) -> bool:
        return self.head is not None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside: the model returns its final hidden states in place of logits (when on)."""
        if self.head is None:
            yield
            return
        self.base.set_output_embeddings(nn.Identity())
        try:
            yield
        finally:
            self.base.set_output_embeddings(self.head)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The summed loss from what the model returned inside `deferred`."""
        return linear_cross_entropy(outputs, self.head, targets, self._work(outputs))

    def _work(self, outputs: Tensor) -> Tensor | None:
        """The CPU's logits buffer, sized for the largest chunk yet and kept from step to step."""
        if outputs.device.type != "cpu":
            return None
        rows = min(outputs.numel() // outputs.shape[-1], chunk_rows(self.head, outputs.device))
        if self.work is None or self.work.shape[1] < rows:
            self.work = outputs.new_empty((self.head.out_features, rows), dtype=torch.float32)
        return self.work


@torch.no_grad()
def _applied_plainly(base: nn.Module, head: nn.Linear) -> bool:
    """Whether the model's logits are exactly its head applied to its final hidden states."""
    ids = torch.tensor([[0, 1, 2]], device=head.weight.device)
    training = base.training
    base.eval()  # dropout would make the two passes differ
    try:
        logits = base(input_ids=ids, use_cache=False).logits
        base.set_output_embeddings(nn.Identity())
        hidden = base(input_ids=ids, use_cache=False).logits
    finally:
        base.set_output_embeddings(head)
        base.train(training)
    if hidden.shape[-1] != head.in_features:
        return False
    return torch.allclose(head(hidden).float(), logits.float(), rtol=1e-4, atol=1e-4)
