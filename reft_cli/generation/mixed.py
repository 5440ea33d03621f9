"""Generation with several adapters on one base model, one adapter (or none) per row.

Every adapter's hooks sit on the same base model; each is armed for its own rows only, so one
batched forward pass serves all of them and a row gets exactly its adapter's edits. A LoRA adapter
changes the whole model, so it serves a batch alone, or steps aside for the base model's batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError

if TYPE_CHECKING:
    from reft_cli.engine.lora import LoraModel

BASE = "base"


@torch.no_grad()
def generate(
    adapters: Mapping[str, ReftModel | LoraModel],
    input_ids: Tensor,
    attention_mask: Tensor,
    adapter_names: Sequence[str],
    *,
    prompt_lengths: Tensor | None = None,
    **generate_kwargs: Any,
) -> Tensor:
    """Generate for a batch whose row i uses `adapters[adapter_names[i]]` (`base`: no adapter)."""
    if len(adapter_names) != input_ids.shape[0]:
        raise ReftError(
            f"adapter_names has {len(adapter_names)} entries for a batch of {input_ids.shape[0]}"
        )
    unknown = sorted({n for n in adapter_names if n != BASE and n not in adapters})
    if unknown:
        raise ReftError(
            f"unknown adapter name {unknown[0]!r}; choose one of {', '.join([BASE, *adapters])}"
        )
    models = list(adapters.values())
    if not models:
        raise ReftError("generate needs at least one adapter")
    if not all(isinstance(m, ReftModel) for m in models):
        return _generate_lora(adapters, input_ids, attention_mask, adapter_names, **generate_kwargs)
    base = models[0].model
    if any(m.model is not base for m in models):
        raise ReftError("all adapters in one batch must wrap the same base model object")
    use_cache = generate_kwargs.get("use_cache", True)
    with ExitStack() as stack:
        for name, model in adapters.items():
            rows = torch.tensor([n == name for n in adapter_names], device=input_ids.device)
            stack.enter_context(
                model.prompt_edits(attention_mask, prompt_lengths, rows=rows, use_cache=use_cache)
            )
        return base.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


def _generate_lora(
    adapters: Mapping[str, LoraModel],
    input_ids: Tensor,
    attention_mask: Tensor,
    adapter_names: Sequence[str],
    **generate_kwargs: Any,
) -> Tensor:
    """A LoRA adapter changes every position, so a batch runs either it or the plain base model."""
    if len(adapters) != 1:
        raise ReftError("a LoRA adapter cannot share a batch with other adapters; use it alone")
    if len(set(adapter_names)) != 1:
        raise ReftError(
            "a LoRA adapter's rows and the base model's cannot share a batch; generate them apart"
        )
    (model,) = adapters.values()
    plain = model.disable_adapter() if adapter_names[0] == BASE else nullcontext()
    with plain:
        return model.generate(input_ids, attention_mask, **generate_kwargs)
