"""The LoRA baseline: a PEFT LoRA model behind ReftModel's interface, so `reft train` runs it as is.

The loop, checkpoints, resume, evaluation during training and best-checkpoint selection call the same
methods on either model; `reft eval` and `reft generate` load either kind of folder. LoRA changes
the computation at every position, so the frozen-prefix cache never applies to it.

The folder is PEFT's own (`adapter_config.json`, `adapter_model.safetensors`: loadable with
`peft.PeftModel.from_pretrained`) plus `reft_lora.json` (lora_config.py). For classification the
head trains in full beside the LoRA matrices (PEFT's modules_to_save), as it does beside ReFT's
interventions, and is saved with them.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor, nn

from reft_cli.engine.adapter_io import give_usual_mode, load_matching_tensors, load_tensors
from reft_cli.engine.base_models import load_model
from reft_cli.engine.folder_names import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from reft_cli.engine.lora_config import LoraAdapterConfig
from reft_cli.errors import ReftError, first_line

PEFT_TASK_TYPES = {"causal_lm": TaskType.CAUSAL_LM, "seq_cls": TaskType.SEQ_CLS}


class LoraSettings(Protocol):
    """What LoRA needs from a config's `lora` section (config.schema.LoraSection)."""

    r: int
    alpha: int
    dropout: float

    def target_list(self) -> str | list[str] | None: ...


HEAD_MARKER = ".modules_to_save."  # in the names of the trainable copy of the classification head


class LoraModel(nn.Module):
    """A base model with LoRA matrices (and, for classification, a trainable head), via PEFT."""

    weights_name = PEFT_WEIGHTS_NAME  # the file `load_adapter_weights` reads in a checkpoint

    def __init__(self, peft_model: PeftModel, config: LoraAdapterConfig) -> None:
        super().__init__()
        self.peft = peft_model
        # Named like ReftModel's, so code reading the prompt format or labels serves both kinds.
        self.reft_config = config

    @property
    def model(self) -> nn.Module:
        """The transformers model, with the LoRA layers inside it (ReftModel.model's counterpart)."""
        return self.peft.get_base_model()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        prompt_lengths: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The model's output with LoRA applied. `prompt_lengths` is accepted so that the loop
        calls both kinds alike; LoRA acts on every position, so it is not needed."""
        del prompt_lengths
        return self.peft(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **generate_kwargs: Any
    ) -> Tensor:
        if self.training:
            raise ReftError("generate runs in eval mode; call model.eval() first")
        return self.peft.generate(
            input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs
        )

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain base model inside this block (for baselines and comparisons)."""
        with self.peft.disable_adapter():
            yield

    def gradient_checkpointing_enable(self) -> None:
        """Non-reentrant checkpointing, so gradients reach the LoRA matrices of frozen blocks."""
        self.model.activation_checkpointing_enable({"use_reentrant": False})

    def describe(self) -> str:
        """One line: the LoRA settings and the modules they adapt."""
        config = self.peft.peft_config["default"]
        targets = sorted({name.rsplit(".", 1)[-1] for name in self.peft.targeted_module_names})
        return (
            f"LoRA r={config.r}, alpha {config.lora_alpha}, dropout {config.lora_dropout:g} on "
            f"{len(self.peft.targeted_module_names)} modules ({', '.join(targets)})"
        )

    def count_parameters(self) -> tuple[int, int, int]:
        """(LoRA parameters, head parameters, base model parameters)."""
        lora = head = base = 0
        for name, param in self.peft.named_parameters():
            if not param.requires_grad:
                base += param.numel()  # the frozen base, with the head's original copy
            elif HEAD_MARKER in name:
                head += param.numel()
            else:
                lora += param.numel()
        return lora, head, base

    # ----------------------------------------------------------------- save and load
    def save_pretrained(self, directory: str | Path) -> None:
        """PEFT's two files, each renamed into place, then reft_lora.json (last: the folder is
        an adapter once it is there)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".peft-", dir=directory) as staging:
            # No embedding layers to save (reft never resizes the vocabulary); saying so here and
            # in load_adapter_weights skips PEFT's hub lookup of the base model's config.
            self.peft.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
            for name in (PEFT_WEIGHTS_NAME, PEFT_CONFIG_NAME):
                give_usual_mode(Path(staging) / name)
                os.replace(Path(staging) / name, directory / name)
        self.reft_config.save(directory)

    @classmethod
    def from_pretrained(
        cls,
        adapter_dir: str | Path,
        base_model: nn.Module | None = None,
        config: LoraAdapterConfig | None = None,
        **load_kwargs: Any,
    ) -> LoraModel:
        """A LoRA folder on `base_model`, or on the model its reft_lora.json names, in eval mode
        (`config`: its reft_lora.json, when the caller has read it already)."""
        adapter_dir = Path(adapter_dir)
        if not adapter_dir.is_dir():
            raise ReftError(f"adapter folder {adapter_dir} does not exist")
        config = config or LoraAdapterConfig.load(adapter_dir)
        weights = adapter_dir / PEFT_WEIGHTS_NAME
        load_tensors(weights)  # missing or corrupt: say so before loading the base model
        if not (adapter_dir / PEFT_CONFIG_NAME).is_file():
            raise ReftError(
                f"{adapter_dir} is not a complete LoRA adapter: {PEFT_CONFIG_NAME} is missing"
            )
        if base_model is None:
            if config.task_type == "seq_cls" and config.num_labels:
                load_kwargs.setdefault("num_labels", config.num_labels)
            base_model = load_model(
                config.base_model,
                task_type=config.task_type,
                dtype=config.dtype,
                revision=config.base_model_revision,
                pooling=config.pooling,
                **load_kwargs,
            )
        try:
            with _without_deprecation_notes():
                peft = PeftModel.from_pretrained(base_model, str(adapter_dir))
        except RuntimeError as err:  # PEFT's load_state_dict: a shape does not fit
            raise ReftError(
                f"{adapter_dir} does not fit this base model ({first_line(err)}); use the base "
                "model the adapter was trained on"
            ) from err
        except (ValueError, TypeError, KeyError) as err:
            raise ReftError(
                f"{adapter_dir / PEFT_CONFIG_NAME} cannot be read ({first_line(err)}); "
                "the adapter is corrupt"
            ) from err
        model = cls(peft, config)
        model.load_adapter_weights(weights)  # PEFT only warns about missing keys; refuse them
        return model.eval()

    def load_adapter_weights(self, path: Path) -> None:
        """Copy a saved adapter's tensors into this model, which must hold exactly those tensors."""
        tensors = load_matching_tensors(
            path,
            get_peft_model_state_dict(self.peft, save_embedding_layers=False),
            "the LoRA settings",
            f"the adapter is corrupt or its {PEFT_CONFIG_NAME} was changed",
        )
        with torch.no_grad():
            set_peft_model_state_dict(self.peft, tensors)


def get_lora_model(
    model: nn.Module, settings: LoraSettings, config: LoraAdapterConfig
) -> LoraModel:
    """Wrap `model` with LoRA as the config's `lora` section says (PEFT's get_peft_model)."""
    targets = settings.target_list()
    if isinstance(targets, list):
        _check_targets(model, targets)
    peft_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type=PEFT_TASK_TYPES[config.task_type],
        modules_to_save=_head_modules(model) if config.task_type == "seq_cls" else None,
    )
    try:
        with _without_deprecation_notes():
            peft = get_peft_model(model, peft_config)
    except ValueError as err:
        raise ReftError(
            f"lora.target_modules: {first_line(err)}; name modules such as "
            f"{', '.join(_linear_names(model)[:6])}, or use all-linear"
        ) from err
    return LoraModel(peft, config)


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every listed name must match a module, as PEFT matches them (the name or its last parts)."""
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        raise ReftError(
            f"lora.target_modules: {', '.join(unmatched)} match no module of "
            f"{type(model).__name__}; its linear modules are {', '.join(_linear_names(model))}"
        )


def _linear_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's linear layers (what target_modules names)."""
    found = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    }
    return sorted(found)


def _head_modules(model: nn.Module) -> list[str]:
    """The modules outside the backbone that hold parameters: the classification head."""
    backbone = getattr(model, "base_model_prefix", "")
    heads = [
        name
        for name, child in model.named_children()
        if name != backbone and any(True for _ in child.parameters())
    ]
    if not heads:
        raise ReftError(f"{type(model).__name__} has no head outside its backbone to train")
    return heads


@contextmanager
def _without_deprecation_notes() -> Iterator[None]:
    """PEFT calls a transformers method that transformers 5 renamed; the note is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield
