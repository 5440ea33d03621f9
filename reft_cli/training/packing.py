"""Packing: a micro-batch's rows as one sequence without pad tokens, so a step costs its real tokens.

transformers 5 reads rows packed into one sequence from `position_ids` that restart at 0 where each
row starts, when the model gets neither a 2D attention mask nor a KV cache
(masking_utils.find_packed_sequence_indices): sdpa and eager then build a block-diagonal causal
mask, flash attention uses its variable-length kernel. Each row's intervention positions move to
where the row starts in the packed sequence, and its targets move with its tokens, so the loss and
its gradients are those of the padded batch. The first batch is run both ways in eval mode; where a
model does not match (one that ignores `position_ids` in its mask), training pads instead and says
why. The frozen-state cache packs its own way, because a KV cache turns that detection off
(prefix_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from reft_cli.data.examples import IGNORE_INDEX
from reft_cli.engine.architecture import find_block_stack
from reft_cli.engine.positions import Positions
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from reft_cli.training.loss import check_selected, forward, next_token_targets

# How far the packed path's logits may be from the padded path's on the first batch (relative):
# rounding in fp32 is ~1e-6, in half precision a few 1e-3; a wrong mask is of order 1.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_TOLERANCE = 2e-2

PositionsOf = Callable[[Tensor, Tensor], dict[str, Positions]]

# The share of a packed step's work its attention may take: packed rows attend through one dense
# mask, so every row's queries meet every other row's keys, computed and then masked out.
ATTENTION_SHARE = 0.1
# Fewer keys than this per sequence is never worth a split: smaller products use the hardware's
# matrix units less well than the masked-out attention they save.
MIN_KEYS = 256


def key_budget(model: ReftModel) -> int:
    """The most keys one packed sequence should hold: beyond it, attention over the masked-out
    keys of other rows costs more than ATTENTION_SHARE of the block's own work. Per query and key
    a block's attention does 4 x (heads x head_dim) FLOPs, per token its weights 2 x parameters,
    so the budget is ATTENTION_SHARE x parameters / (2 x heads x head_dim): about 300 keys for
    SmolLM2-135M, 2,500 for a 7B Llama; never under MIN_KEYS."""
    config = model.model.config
    heads = getattr(config, "num_attention_heads", None) or 0
    width = heads * (getattr(config, "head_dim", None) or config.hidden_size // max(heads, 1))
    _, blocks = find_block_stack(model.model)
    if not width or not len(blocks):
        return 0
    share = ATTENTION_SHARE * sum(p.numel() for p in blocks[0].parameters()) / (2 * width)
    return max(int(share), MIN_KEYS)


def packed_index(positions: Positions, starts: Tensor, offsets: Tensor) -> Tensor:
    """(1, B*K) indices into the packed sequence, -1 for unused slots. `starts` is where each row's
    first real token sits in its padded row, `offsets` where the row begins once packed."""
    index = positions.index - starts[:, None] + offsets[:, None]
    return torch.where(positions.mask, index, -1).reshape(1, -1)


def exclusive_cumsum(lengths: Tensor) -> Tensor:
    """Where each of rows of these lengths starts when they are laid end to end."""
    return lengths.cumsum(0) - lengths


def packed_forward(
    model: nn.Module,
    positions_of: PositionsOf,
    batch: dict[str, Tensor],
    head_on_targets: bool,
) -> tuple[Tensor, Tensor]:
    """(logits, targets) of a causal-LM micro-batch run as one packed sequence; flattened alike,
    they equal the padded path's at every target."""
    real = batch["attention_mask"].bool()
    lengths = real.sum(dim=1)
    starts = real.long().argmax(dim=1)  # 0 for right padding, the pad count for left padding
    offsets = exclusive_cumsum(lengths)
    found = positions_of(batch["prompt_lengths"], batch["attention_mask"])
    explicit = {group: packed_index(p, starts, offsets) for group, p in found.items()}
    columns = torch.arange(real.shape[1], device=real.device)[None] - starts[:, None]
    targets = next_token_targets(batch["labels"])[real][None]
    kwargs = {}
    if head_on_targets:
        keep = targets != IGNORE_INDEX
        kwargs["logits_to_keep"] = keep
        targets = targets[keep]
    logits = model(
        batch["input_ids"][real][None],
        None,  # no 2D mask: the restarting position ids are what marks the rows
        intervention_positions=explicit,
        position_ids=columns[real][None],
        use_cache=False,  # a cache would turn the packed-sequence detection off
        **kwargs,
    ).logits
    check_selected(logits, targets)
    return logits, targets


def flat(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and targets at the target positions only, one row per target, in row order."""
    if logits.dim() == 2:
        return logits, targets
    keep = targets != IGNORE_INDEX
    return logits[keep], targets[keep]


def relative_error(got: Tensor, want: Tensor) -> str | None:
    """Why two paths' target logits differ, or None when they agree within rounding."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} against {tuple(want.shape)}"
    error = ((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12)).item()
    if error > TOLERANCE.get(want.dtype, HALF_TOLERANCE):
        return f"relative error {error:.2g}"
    return None


class Packer:
    """Runs training micro-batches packed, once the first batch has shown it matches padding."""

    def __init__(self, model: ReftModel, head_on_targets: bool, required: bool) -> None:
        self.model = model
        self.head_on_targets = head_on_targets
        self.required = required  # train.packing=true: a mismatch is an error, not a fallback
        self.active = True
        self.checked = False
        self.note = ""  # why packing stepped back, if it did

    def forward(self, wrapped: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits, targets) of one micro-batch, packed when that matches the padded path."""
        if not self.checked:
            self._check(batch)
        if not self.active:
            return forward(wrapped, batch, "causal_lm", self.head_on_targets)
        return packed_forward(wrapped, self.model.positions_for, batch, self.head_on_targets)

    def _check(self, batch: dict[str, Tensor]) -> None:
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                want = flat(*forward(self.model, batch, "causal_lm", self.head_on_targets))
                try:
                    got = flat(
                        *packed_forward(
                            self.model, self.model.positions_for, batch, self.head_on_targets
                        )
                    )
                    error = relative_error(got[0], want[0])
                except Exception as exc:  # a model whose forward cannot take packed rows
                    error = f"{type(exc).__name__}: {exc}"
        finally:
            self.model.train(training)
        self.checked = True
        if error is None:
            return
        if self.required:
            raise ReftError(
                f"train.packing=true, but packed rows do not match padded ones on this model "
                f"({error}); set train.packing=auto to pad instead"
            )
        self.active = False
        self.note = f"packing off, rows are padded: packed rows differ from padded ones ({error})"
