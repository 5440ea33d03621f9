"""A base model's structure without its weights: built on the meta device from its config alone.

Enough to check an adapter against the model (layers, hidden size, head parameter names and shapes)
and to count parameters, without reading gigabytes of weights.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from reft_cli.engine.base_models import resolve
from reft_cli.errors import ReftError


def model_skeleton(
    name: str, task_type: str = "causal_lm", revision: str | None = None
) -> nn.Module:
    """The model `name` (alias, hub id or folder) with every tensor on the meta device."""
    path, extra = resolve(name)
    try:  # the local cache first: no waiting on an unreachable hub when the config is at hand
        config = AutoConfig.from_pretrained(path, revision=revision, local_files_only=True, **extra)
    except OSError:
        try:
            config = AutoConfig.from_pretrained(path, revision=revision, **extra)
        except OSError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ReftError(f"could not load the config of model {name!r}: {first}") from err
    auto = AutoModelForSequenceClassification if task_type == "seq_cls" else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = auto.from_config(config)
    except ValueError as err:
        raise ReftError(f"cannot build {name!r} as a {task_type} model: {err}") from err
    model.name_or_path = name
    return model.eval()
