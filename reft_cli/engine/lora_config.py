"""`reft_lora.json`: what reft records beside PEFT's own files so that a LoRA run reloads like an adapter.

PEFT's `adapter_config.json` and `adapter_model.safetensors` hold the LoRA itself. This file adds
what reft keeps for every adapter: the base model as reft names it (an alias such as
smollm2-135m-instruct, or a folder), the task type, dtype and head size, the prompt template and the
tokenizer settings. Its fields carry ReftConfig's names, so code that reads an adapter's prompt
format or label names serves both kinds. This module imports no PEFT, so telling the kinds apart
stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reft_cli.engine.adapter_config import (
    FORMAT_VERSION,
    TASK_TYPES,
    ReftConfig,
    from_dict,
    read_config_json,
)
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import (
    CONFIG_NAME,
    LORA_CONFIG_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    WEIGHTS_NAME,
)
from reft_cli.errors import ReftError, check_choice


@dataclass
class LoraAdapterConfig:
    """reft's record of a LoRA adapter: its base model, task and prompt format."""

    base_model: str | None = None
    base_model_revision: str | None = None
    task_type: str = "causal_lm"
    pooling: str = "first"  # seq_cls: what the head reads, see engine/pooling.py
    dtype: str = "float32"
    num_labels: int | None = None  # seq_cls: the head's outputs
    prompt_template: str | None = None
    system_prompt: str | None = None  # for prompt_template: chat
    tokenizer: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_choice("task_type", self.task_type, TASK_TYPES)

    def save(self, directory: Path) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(directory) / LORA_CONFIG_NAME, text)

    @classmethod
    def load(cls, directory: Path) -> LoraAdapterConfig:
        path = Path(directory) / LORA_CONFIG_NAME
        if not path.is_file():
            raise ReftError(f"{directory} is not a LoRA adapter: {LORA_CONFIG_NAME} is missing")
        return from_dict(cls, read_config_json(path), str(path))


def is_lora_adapter(folder: Path) -> bool:
    return (Path(folder) / LORA_CONFIG_NAME).is_file()


def load_adapter_config(folder: Path) -> ReftConfig | LoraAdapterConfig:
    """The record of either kind of adapter folder (a LoRA one is recognised by reft_lora.json)."""
    folder = Path(folder)
    if is_lora_adapter(folder):
        return LoraAdapterConfig.load(folder)
    if folder.is_dir() and not (folder / CONFIG_NAME).is_file():
        raise ReftError(
            f"{folder} is not an adapter: it holds neither {CONFIG_NAME} (ReFT) nor "
            f"{LORA_CONFIG_NAME} (LoRA); point --adapter at a folder written by `reft train`"
        )
    return ReftConfig.load(folder)


def adapter_files(folder: Path) -> tuple[Path, Path]:
    """(weights file, config file) of an adapter folder of either kind."""
    folder = Path(folder)
    if is_lora_adapter(folder):
        return folder / PEFT_WEIGHTS_NAME, folder / PEFT_CONFIG_NAME
    return folder / WEIGHTS_NAME, folder / CONFIG_NAME
