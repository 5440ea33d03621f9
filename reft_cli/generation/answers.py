"""Answers for rows of prompts, each row under its own adapter (or `base`), in one batched pass.

Prompts are formatted with each adapter's own template from its reft_config.json, so training and
inference formats cannot drift; `raw` sends the text as is. Rows for the plain base model take the
first adapter's format, so comparisons put the same prompt text to both.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import torch

from reft_cli.config.schema import NAMED_TEMPLATES, DataConfig, GenerateConfig
from reft_cli.data.decoding import decode_answers
from reft_cli.data.examples import left_padded
from reft_cli.data.templates import make_template
from reft_cli.engine.loading import LoadedModel
from reft_cli.engine.reft_model import BASE
from reft_cli.errors import ReftError


@dataclass
class Answerer:
    """A loaded model (its adapters by name) and how to put rows to it."""

    loaded: LoadedModel
    raw: bool = False

    @property
    def names(self) -> list[str]:
        return list(self.loaded.records)

    @property
    def default_name(self) -> str:
        return self.names[0]

    def check_name(self, name: str) -> None:
        if name != BASE and name not in self.loaded.records:
            raise ReftError(
                f"unknown adapter {name!r}; choose one of {', '.join([BASE, *self.names])}"
            )

    def format(self, name: str, row: dict[str, Any]) -> tuple[str, bool]:
        """(prompt text, whether it already holds special tokens) for a row under an adapter."""
        if "prompt" in row:
            prompt_text(row)  # an empty prompt is an error, whatever the template adds around it
        record = self.loaded.records.get(name) or self.loaded.records[self.default_name]
        spec = record.prompt_template
        if self.raw or not spec:
            return prompt_text(row), False
        template = make_template(
            DataConfig(template=spec, system_prompt=record.system_prompt), self.loaded.tokenizer
        )
        fields = (
            [n for _, n, _, _ in string.Formatter().parse(spec) if n]
            if spec not in NAMED_TEMPLATES
            else []
        )
        if len(fields) == 1 and fields[0] not in row:
            row = {**row, fields[0]: prompt_text(row)}
        return template.prompt(row), template.has_special_tokens

    def encode(self, names: list[str], rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokenizer = self.loaded.tokenizer
        texts = [self.format(n, r) for n, r in zip(names, rows, strict=True)]
        encoded = [
            tokenizer(t, add_special_tokens=not special)["input_ids"] for t, special in texts
        ]
        self.loaded.check_prompt_lengths([len(ids) for ids in encoded], "a prompt")
        return left_padded(encoded, tokenizer.pad_token_id)

    def answer(
        self, names: list[str], rows: list[dict[str, Any]], settings: GenerateConfig, **extra: Any
    ) -> list[list[str]]:
        """Each row's generations (num_return_sequences per row)."""
        if self.loaded.is_lora and len(set(names)) > 1:
            return self._answer_apart(names, rows, settings, **extra)
        batch = self.encode(names, rows)
        tokenizer = self.loaded.tokenizer
        out = self.loaded.generate(
            batch["input_ids"],
            batch["attention_mask"],
            names,
            **settings.kwargs(tokenizer.pad_token_id),
            **extra,
        )
        texts = decode_answers(tokenizer, out[:, batch["input_ids"].shape[1] :])
        k = settings.num_return_sequences
        return [texts[i * k : (i + 1) * k] for i in range(len(rows))]

    def _answer_apart(
        self, names: list[str], rows: list[dict[str, Any]], settings: GenerateConfig, **extra: Any
    ) -> list[list[str]]:
        """One batch per name: a LoRA adapter changes every position, so its rows and the base
        model's cannot share a forward pass."""
        answers: list[list[str]] = [[] for _ in rows]
        for name in dict.fromkeys(names):
            chosen = [i for i, n in enumerate(names) if n == name]
            texts = self.answer([name] * len(chosen), [rows[i] for i in chosen], settings, **extra)
            for i, text in zip(chosen, texts, strict=True):
                answers[i] = text
        return answers


def prompt_text(row: dict[str, Any]) -> str:
    text = row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ReftError("empty prompt: give some text (or a `prompt` field in each input row)")
    return text


def seed_from(settings: GenerateConfig) -> None:
    """Seed torch before a batch, so a given seed samples the same answers."""
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
