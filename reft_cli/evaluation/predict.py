"""The model under evaluation and its batched predictions: greedy generation and classification.

`load_for_eval` loads an adapter on its base model (or the base model alone) through the engine's
one loader. Prompts are sorted by length (longest first, so memory runs out on the first batch if
at all) and batched; generation pads on the left so every row's new tokens start at the same
column, and classification pads on the right. Results come back in the caller's order.
Interventions edit the prompt only: positions come from each row's attention mask, so padding
never moves them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from reft_cli.config.schema import ModelConfig
from reft_cli.data.decoding import decode_answers
from reft_cli.data.examples import Example, collate, left_padded
from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.loading import LoadedModel, Placement, load_adapters, load_base
from reft_cli.engine.lora_config import LoraAdapterConfig

__all__ = ["classify", "generate_texts", "length_sorted_batches", "load_for_eval"]

Advance = Callable[[int], None]


def load_for_eval(
    adapter: Path | None,
    base: ModelConfig,
    num_labels: int | None = None,
    device: str = "auto",
    record: ReftConfig | LoraAdapterConfig | None = None,
) -> LoadedModel:
    """`adapter` on the base model it names, or (None) the model `base` describes, in eval mode.

    The config's dtype and device map are honoured; without a map, the model goes to `device`.
    A classifier adapter's head size is read from its weights; `num_labels` sizes a bare
    classifier's (random) head.
    """
    if adapter is not None:
        placement = Placement(device=device, device_map=base.device_map)
        records = {"default": record} if record is not None else None
        return load_adapters({"default": adapter}, placement=placement, records=records)
    placement = Placement(device=device, device_map=base.device_map, dtype=base.dtype)
    return load_base(
        base.name_or_path,
        task_type=base.task_type,
        revision=base.revision,
        num_labels=base.num_labels or num_labels,
        placement=placement,
        trust_remote_code=base.trust_remote_code,
        pooling=base.pooling,
    )


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_texts(
    subject: LoadedModel,
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    max_new_tokens: int,
    advance: Advance = lambda n: None,
) -> list[str]:
    """Greedy continuations of tokenized prompts, decoded without special tokens."""
    tokenizer = subject.tokenizer
    settings = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": tokenizer.pad_token_id,
    }
    stop = _stop_tokens(subject)
    if stop:
        settings["eos_token_id"] = stop
    texts: list[str] = [""] * len(prompts)
    for rows in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = left_padded([prompts[i] for i in rows], tokenizer.pad_token_id)
        out = subject.generate(batch["input_ids"], batch["attention_mask"], **settings)
        width = batch["input_ids"].shape[1]
        decoded = decode_answers(tokenizer, out[:, width:])
        for i, text in zip(rows, decoded, strict=True):
            texts[i] = text
        advance(len(rows))
    return texts


def _stop_tokens(subject: LoadedModel) -> list[int]:
    """The model's own end tokens (some chat models have several) plus the tokenizer's."""
    config = getattr(subject.base_model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    stop = [found] if isinstance(found, int) else list(found or [])
    if subject.tokenizer.eos_token_id is not None and subject.tokenizer.eos_token_id not in stop:
        stop.append(subject.tokenizer.eos_token_id)
    return stop


@torch.no_grad()
def classify(
    subject: LoadedModel,
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    advance: Advance = lambda n: None,
) -> list[float]:
    """The predicted class id of each prompt, or its score for a one-output (regression) head."""
    preds: list[float] = [0.0] * len(prompts)
    for rows in length_sorted_batches([len(p) for p in prompts], batch_size):
        examples = [Example(i, list(prompts[i]), len(prompts[i])) for i in rows]
        logits = subject.logits(collate(examples, subject.tokenizer.pad_token_id)).float()
        values = logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)
        for i, value in zip(rows, values.tolist(), strict=True):
            preds[i] = value
        advance(len(rows))
    return preds
