"""bench/flops.py counts the CPU attention kernel that torch's own FlopCounterMode skips."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from flops import step_flops


def test_attention_counts_what_its_matrix_products_would():
    b, h, q, k, d = 1, 3, 10, 14, 8
    query, key, value = (torch.randn(b, h, n, d, requires_grad=True) for n in (q, k, k))
    mask = torch.ones(b, 1, q, k, dtype=torch.bool)

    def attention():
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        out.sum().backward()

    def by_products():  # the same arithmetic written out: two products forward, four backward
        ((query @ key.transpose(-1, -2)).softmax(-1) @ value).sum().backward()

    assert step_flops(by_products) == 6 * 2 * b * h * q * k * d
    # The fused kernel's backward also recomputes the scores: one product more.
    assert step_flops(attention) == step_flops(by_products) + 2 * b * h * q * k * d
