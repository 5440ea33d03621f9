"""What a run trains: the tokenizer, the data and the base model wrapped with interventions (or,
with `method: lora`, with LoRA), built from a RunConfig; `reft train --dry-run` shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import set_seed
from transformers import PreTrainedTokenizerBase

from reft_cli.config.schema import RunConfig
from reft_cli.data.examples import LoadedData, load_data
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.lora_config import LoraAdapterConfig
from reft_cli.engine.reft_model import ReftModel, get_reft_model

if TYPE_CHECKING:
    from reft_cli.engine.lora import LoraModel


@dataclass
class Setup:
    """Everything built from a config before the first step."""

    run: RunConfig
    tokenizer: PreTrainedTokenizerBase
    model: ReftModel | LoraModel
    data: LoadedData


def build(run: RunConfig) -> Setup:
    """Load tokenizer, data and base model, and wrap the model with the configured interventions
    (or, with `method: lora`, with LoRA)."""
    set_seed(run.train.seed)
    tokenizer = load_tokenizer(run.model.name_or_path, run.model.revision)
    data = load_data(
        run.data,
        run.model.task_type,
        tokenizer,
        num_labels=run.model.num_labels,
        seed=run.train.seed,
    )
    extra: dict[str, Any] = (
        {"num_labels": data.num_labels} if run.model.task_type == "seq_cls" else {}
    )
    if run.model.device_map is not None:  # accelerate keeps a dispatched model where it is
        extra["device_map"] = run.model.device_map
    base = load_model(
        run.model.name_or_path,
        task_type=run.model.task_type,
        dtype=run.model.dtype,
        revision=run.model.revision,
        trust_remote_code=run.model.trust_remote_code,
        pooling=run.model.pooling,
        **extra,
    )
    if base.config.pad_token_id is None:
        base.config.pad_token_id = tokenizer.pad_token_id
    settings: dict[str, Any] = {
        "padding_side": tokenizer.padding_side,
        "pad_token": tokenizer.pad_token,
    }
    if data.label_names:
        settings["label_names"] = data.label_names
    if run.method == "lora":
        return Setup(run, tokenizer, _lora_model(run, base, data, settings), data)
    reft_config = run.reft_config(base.config.get_text_config().num_hidden_layers)
    if run.method == "probe":  # the head alone: an adapter with no interventions
        reft_config.interventions = []
    reft_config.prompt_template = data.template
    reft_config.system_prompt = run.data.system_prompt
    reft_config.tokenizer = settings
    return Setup(run, tokenizer, get_reft_model(base, reft_config), data)


def _lora_model(
    run: RunConfig, base: torch.nn.Module, data: LoadedData, tokenizer: dict[str, Any]
) -> LoraModel:
    """The LoRA baseline on `base`; PEFT is imported only when a run asks for it."""
    from reft_cli.engine.lora import get_lora_model

    config = LoraAdapterConfig(
        base_model=run.model.name_or_path,
        base_model_revision=run.model.revision,
        task_type=run.model.task_type,
        pooling=run.model.pooling,
        dtype=run.model.dtype,
        num_labels=data.num_labels if run.model.task_type == "seq_cls" else None,
        prompt_template=data.template,
        system_prompt=run.data.system_prompt,
        tokenizer=tokenizer,
    )
    return get_lora_model(base, run.lora, config)
