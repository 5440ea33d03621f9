"""Floating-point work of one training step, as torch's FlopCounterMode counts it.

Counting the work each side does bounds the speed-up a faster implementation can give on the same
shape: a time ratio above the FLOP ratio would mean doing the same arithmetic faster, not doing
less of it. FlopCounterMode does not count the CPU attention kernel that torch's
scaled_dot_product_attention calls, so it is counted here with torch's own attention formulas (all
query-key pairs the kernel is given, masked or not, as the kernel computes them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter

_ATEN = torch.ops.aten


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward(
    grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


_CPU_ATTENTION = {
    _ATEN._scaled_dot_product_flash_attention_for_cpu: _attention,
    _ATEN._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
}


def step_flops(step: Callable[[], object]) -> int:
    """Run `step` once and return the FLOPs of its forward and backward passes."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        step()
    return counter.get_total_flops()
