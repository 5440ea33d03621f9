"""The model under evaluation and its batched predictions: greedy generation and classification.

`load_subject` loads an adapter on its base model (or the base model alone). Prompts are sorted by length (longest first, so memory runs out on the first batch if at all) and
batched; generation pads on the left so every row's new tokens start at the same column, and
classification pads on the right. Results come back in the caller's order. Interventions edit the
prompt only: positions come from each row's attention mask, so padding never moves them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from reft_cli.config.schema import ModelConfig
from reft_cli.data.examples import Example, collate
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.folder_names import WEIGHTS_NAME
from reft_cli.engine.lora_config import LoraAdapterConfig, load_adapter_config
from reft_cli.engine.reft_model import ReftModel

__all__ = ["Subject", "classify", "generate_texts", "length_sorted_batches", "load_subject"]

Advance = Callable[[int], None]


@dataclass
class Subject:
    """The model under evaluation: an adapter on its base model, or the base model alone."""

    model: nn.Module  # a ReftModel or LoraModel, or a plain transformers model
    tokenizer: PreTrainedTokenizerBase
    task_type: str = "causal_lm"

    @property
    def base_model(self) -> nn.Module:
        return self.model.model if self.has_adapter else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_adapter(self) -> bool:
        """A ReftModel or LoraModel: both take `prompt_lengths` and carry a `reft_config`."""
        return hasattr(self.model, "reft_config")

    def generate(self, input_ids: Tensor, attention_mask: Tensor, **kwargs) -> Tensor:
        if self.has_adapter:
            return self.model.generate(input_ids, attention_mask, **kwargs)
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def logits(self, batch: dict[str, Tensor]) -> Tensor:
        if self.has_adapter:
            out = self.model(
                batch["input_ids"], batch["attention_mask"], prompt_lengths=batch["prompt_lengths"]
            )
        else:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits


def load_subject(adapter: Path | None, base: ModelConfig, num_labels: int | None = None) -> Subject:
    """`adapter` on the base model it names, or (None) the model `base` describes, in eval mode.

    A classifier adapter's head size is read from its weights; `num_labels` sizes a bare
    classifier's (random) head.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if adapter is not None:
        reft = load_adapter_config(adapter)
        tokenizer = load_tokenizer(reft.base_model or "", reft.base_model_revision)
        if isinstance(reft, LoraAdapterConfig):
            from reft_cli.engine.lora import LoraModel  # PEFT, imported only for a LoRA folder

            model = LoraModel.from_pretrained(adapter)
        else:
            extra = {}
            if reft.task_type == "seq_cls":
                extra["num_labels"] = _head_outputs(adapter / WEIGHTS_NAME)
            model = ReftModel.from_pretrained(adapter, **extra)
        task_type, plain = reft.task_type, model.model
    else:
        extra = (
            {"num_labels": base.num_labels or num_labels or 2}
            if base.task_type == "seq_cls"
            else {}
        )
        tokenizer = load_tokenizer(base.name_or_path, base.revision)
        model = plain = load_model(
            base.name_or_path,
            task_type=base.task_type,
            dtype=base.dtype,
            revision=base.revision,
            trust_remote_code=base.trust_remote_code,
            **extra,
        )
        task_type = base.task_type
    if plain.config.pad_token_id is None:
        plain.config.pad_token_id = tokenizer.pad_token_id
    return Subject(model.to(device).eval(), tokenizer, task_type)


def _head_outputs(weights: Path) -> int | None:
    """The classification head's output count, read from the adapter file's tensor shapes."""
    from safetensors import safe_open

    if not weights.is_file():
        return None  # from_pretrained reports the missing file
    with safe_open(str(weights), "pt") as handle:
        shapes = [
            handle.get_slice(key).get_shape()
            for key in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
            if key.startswith("head.") and key.endswith("weight")
        ]
    outputs = [shape[0] for shape in shapes if len(shape) == 2]
    return min(outputs) if outputs else None


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return input_ids, mask


@torch.no_grad()
def generate_texts(
    subject: Subject,
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
        input_ids, mask = _left_padded([prompts[i] for i in rows], tokenizer.pad_token_id)
        out = subject.generate(input_ids.to(subject.device), mask.to(subject.device), **settings)
        decoded = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
        for i, text in zip(rows, decoded, strict=True):
            texts[i] = text
        advance(len(rows))
    return texts


def _stop_tokens(subject: Subject) -> list[int]:
    """The model's own end tokens (some chat models have several) plus the tokenizer's."""
    config = getattr(subject.base_model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    stop = [found] if isinstance(found, int) else list(found or [])
    if subject.tokenizer.eos_token_id is not None and subject.tokenizer.eos_token_id not in stop:
        stop.append(subject.tokenizer.eos_token_id)
    return stop


@torch.no_grad()
def classify(
    subject: Subject,
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    advance: Advance = lambda n: None,
) -> list[float]:
    """The predicted class id of each prompt, or its score for a one-output (regression) head."""
    preds: list[float] = [0.0] * len(prompts)
    for rows in length_sorted_batches([len(p) for p in prompts], batch_size):
        examples = [Example(i, list(prompts[i]), len(prompts[i])) for i in rows]
        batch = collate(examples, subject.tokenizer.pad_token_id)
        batch = {k: v.to(subject.device) for k, v in batch.items()}
        logits = subject.logits(batch).float()
        values = logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)
        for i, value in zip(rows, values.tolist(), strict=True):
            preds[i] = value
        advance(len(rows))
    return preds
