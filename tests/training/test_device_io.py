"""Batches reach the device without blocking the host, and losses stay there until read."""

import math

import pytest
import torch

from reft_cli.training.device_io import LossWatch, to_device


def a_batch():
    return {
        "input_ids": torch.arange(6).reshape(2, 3),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "example_ids": torch.tensor([4, 9]),
    }


def test_on_the_cpu_a_batch_is_unchanged():
    batch = a_batch()
    placed = to_device(batch, torch.device("cpu"))
    assert all(placed[k] is batch[k] for k in batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_inputs_go_over_from_pinned_memory_and_example_ids_stay_on_the_host():
    batch = a_batch()
    placed = to_device(batch, torch.device("cuda"))
    assert placed["input_ids"].is_cuda and placed["attention_mask"].is_cuda
    assert placed["example_ids"].device.type == "cpu"
    torch.cuda.synchronize()
    assert torch.equal(placed["input_ids"].cpu(), batch["input_ids"])


def test_the_watch_keeps_the_latest_loss_and_the_first_non_finite_one():
    watch = LossWatch(torch.device("cpu"))
    assert watch.read() == (None, 0, 0.0)
    watch.record(torch.tensor(2.5), 1)
    assert watch.read() == (2.5, 0, 0.0)
    for step, value in ((2, 1.5), (3, math.inf), (4, math.nan), (5, 0.5)):
        watch.record(torch.tensor(value), step)
    assert watch.read() == (0.5, 3, math.inf)  # step 3 was the first; later ones do not move it
