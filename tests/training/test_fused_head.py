"""The head fused with the loss gives the plain cross-entropy's loss and gradients, whatever the
chunking, and only where the model's logits are its head applied plainly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reft_cli.training.fused_head import FusedHead, _LinearCrossEntropy, linear_cross_entropy
from reft_cli.training.loss import loss_sum
from tests.training.test_prefix_cache import base_model


def head_and_rows(bias=True):
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias).requires_grad_(False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[::5] = -100  # ignored positions, as prompts are
    return head, hidden, targets


@pytest.mark.parametrize("rows", [1, 7, 37, 100])
@pytest.mark.parametrize("work", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_loss_and_gradient_equal_the_plain_cross_entropy(rows, work, bias):
    head, hidden, targets = head_and_rows(bias)
    want = F.cross_entropy(head(hidden), targets, ignore_index=-100, reduction="sum")
    (want_grad,) = torch.autograd.grad(want * 1.7, hidden)
    buffer = torch.full((50, 100), float("nan")) if work else None  # stale contents never leak
    got = _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, rows, buffer)
    (grad,) = torch.autograd.grad(got * 1.7, hidden)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-5)


def test_under_autocast_the_fused_loss_uses_the_plain_heads_precision():
    head, hidden, targets = head_and_rows()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(head(hidden).float(), targets, ignore_index=-100, reduction="sum")
        got = linear_cross_entropy(hidden, head, targets)
    assert got.item() == pytest.approx(want.item(), rel=1e-3)
    exact = F.cross_entropy(head(hidden), targets, ignore_index=-100, reduction="sum")
    assert got.item() != exact.item()  # bf16 rounding shows: the products did run in bf16


def test_a_model_whose_logits_are_its_head_fuses_and_gets_its_head_back():
    base = base_model(tie_word_embeddings=True).requires_grad_(False)
    fused = FusedHead(base)
    assert fused.on and fused.head is base.lm_head
    ids = torch.tensor([[3, 4, 5, 6]])
    targets = torch.tensor([4, 5, 6, -100])
    with fused.deferred():
        hidden = base(input_ids=ids).logits
    assert base.get_output_embeddings() is fused.head and hidden.shape == (1, 4, 32)
    got, count = loss_sum(hidden[0], targets, "causal_lm", fused)
    want, _ = loss_sum(base(input_ids=ids).logits[0], targets, "causal_lm")
    assert count == 3 and got.item() == pytest.approx(want.item(), rel=1e-6)


def test_a_model_that_caps_its_logits_or_trains_its_head_keeps_the_plain_head():
    capped = base_model().requires_grad_(False)
    assert FusedHead(capped).on
    real = capped.forward

    def capping(*args, **kwargs):
        out = real(*args, **kwargs)
        out.logits = 30 * torch.tanh(out.logits / 30)  # a soft cap, as Gemma 2 applies
        return out

    capped.forward = capping
    assert not FusedHead(capped).on
    trained = base_model().requires_grad_(False)
    trained.lm_head.weight.requires_grad_(True)
    assert not FusedHead(trained).on
