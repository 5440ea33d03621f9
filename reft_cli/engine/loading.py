"""The one loader: adapter folders of either kind on one base model, on the device the user chose.

`reft generate`, `reft eval`, `reft smoke` and the Python API all load through `load_adapters`. It
reads each folder's record once, tells ReFT folders from LoRA ones, loads the base model once (in
the dtype asked for, spread over GPUs by accelerate when `device_map` is given), attaches every ReFT
adapter to one ReftModel under its name, and moves the whole model to the chosen device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.folder_names import WEIGHTS_NAME
from reft_cli.engine.lora_config import LoraAdapterConfig, load_adapter_config
from reft_cli.engine.reft_model import BASE, ReftModel
from reft_cli.errors import ReftError

DEVICES = "auto, cpu, cuda, cuda:N or mps"
Record = ReftConfig | LoraAdapterConfig


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` is the accelerator when there is one (CUDA, then Apple's MPS), else the CPU."""
    if isinstance(name, torch.device):
        return name
    text = name.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ReftError(f"unknown device {name!r}; choose {DEVICES}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ReftError(f"--device {name}: this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ReftError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ReftError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps", "meta"):
        raise ReftError(f"unknown device {name!r}; choose {DEVICES}")
    return device


@dataclass(frozen=True)
class Placement:
    """Where and how to load: a device, or an accelerate device map, and a dtype override."""

    device: str | torch.device = "auto"
    device_map: str | dict[str, Any] | None = None  # "auto" spreads a large model over the GPUs
    dtype: str | None = None  # None: the dtype the adapter was trained in


@dataclass
class LoadedModel:
    """What generation and evaluation run: a ReftModel holding named adapters, a LoraModel, or
    the plain base model, with its tokenizer and each adapter's record."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    task_type: str = "causal_lm"
    records: dict[str, Record] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.model, ReftModel) and not self.records:
            self.records = {name: a.config for name, a in self.model.adapters.items()}
        elif self.has_adapter and not self.records:
            self.records = {"default": self.model.reft_config}

    @property
    def has_adapter(self) -> bool:
        """A ReftModel or LoraModel: both take `prompt_lengths` and carry a `reft_config`."""
        return hasattr(self.model, "reft_config")

    @property
    def is_lora(self) -> bool:
        return self.has_adapter and not isinstance(self.model, ReftModel)

    @property
    def base_model(self) -> nn.Module:
        return self.model.model if self.has_adapter else self.model

    @property
    def context_length(self) -> int | None:
        """The most positions the model was built for (max_position_embeddings), if it says."""
        config = getattr(self.base_model, "config", None)
        length = getattr(config, "max_position_embeddings", None)
        return length if isinstance(length, int) and length > 0 else None

    def check_prompt_lengths(self, lengths: list[int], what: str) -> None:
        """Refuse prompts longer than the model's context: past it a model generates garbage."""
        limit = self.context_length
        longest = max(lengths, default=0)
        if limit is not None and longest > limit:
            raise ReftError(
                f"{what} is {longest} tokens long but the model's context is {limit} positions "
                "(max_position_embeddings); shorten it"
            )

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' device (the first GPU under a device map)."""
        embeddings = getattr(self.base_model, "get_input_embeddings", None)
        if embeddings is not None and embeddings() is not None:
            return embeddings().weight.device
        return next(self.model.parameters()).device

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        adapter_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Generate for a batch; row i uses adapter `adapter_names[i]` (`base`: none)."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if isinstance(self.model, ReftModel):
            return self.model.generate(
                input_ids, attention_mask, adapter_names=adapter_names, **kwargs
            )
        if not self.has_adapter:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._generate_lora(input_ids, attention_mask, adapter_names, **kwargs)

    def _generate_lora(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        adapter_names: Sequence[str] | None,
        **kwargs: Any,
    ) -> Tensor:
        """A LoRA adapter changes every position, so a batch runs either it or the base model."""
        names = set(adapter_names or [next(iter(self.records))])
        if len(names) > 1:
            raise ReftError(
                "a LoRA adapter's rows and the base model's cannot share a batch; generate them apart"
            )
        if names == {BASE}:
            with self.model.disable_adapter():
                return self.model.generate(input_ids, attention_mask, **kwargs)
        return self.model.generate(input_ids, attention_mask, **kwargs)

    def logits(self, batch: Mapping[str, Tensor], **kwargs: Any) -> Tensor:
        """Classification or LM logits of a right-padded batch with `prompt_lengths`; `kwargs` go
        to the base model's forward (`logits_to_keep`, to run the head on some positions only)."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.has_adapter:
            out = self.model(
                batch["input_ids"],
                batch["attention_mask"],
                prompt_lengths=batch["prompt_lengths"],
                **kwargs,
            )
        else:
            out = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
            )
        return out.logits


def read_records(
    adapters: Mapping[str, Path], known: Mapping[str, Record] | None = None
) -> dict[str, Record]:
    """Each folder's record, read once (`known` ones are not read again); a LoRA folder must be
    the only one."""
    records: dict[str, Record] = {}
    for name, path in adapters.items():
        if known is not None and name in known:
            records[name] = known[name]
            continue
        if not Path(path).is_dir():
            raise ReftError(f"adapter folder {path} does not exist")
        records[name] = load_adapter_config(Path(path))
    lora = [n for n, r in records.items() if isinstance(r, LoraAdapterConfig)]
    if lora and len(records) > 1:
        raise ReftError(
            f"{adapters[lora[0]]} is a LoRA adapter, which changes the whole model, so it cannot "
            "serve rows beside other adapters; generate with it alone"
        )
    return records


def load_adapters(
    adapters: Mapping[str, Path],
    *,
    base_model: str | None = None,
    placement: Placement = Placement(),
    trust_remote_code: bool = False,
    records: Mapping[str, Record] | None = None,
) -> LoadedModel:
    """Named adapter folders on one base model (theirs, or `base_model`), in eval mode.

    `records` are folders' records the caller has already read, so no file is read twice.
    """
    if not adapters:
        raise ReftError("give at least one adapter folder")
    device = _target(placement)
    records = read_records(adapters, records)
    names = {r.base_model for r in records.values()}
    if base_model is None and len(names) > 1:
        raise ReftError(
            f"the adapters name different base models ({', '.join(sorted(map(str, names)))}); "
            "pass --base-model to choose one"
        )
    first_name, first = next(iter(records.items()))
    model_name = base_model or first.base_model
    if not model_name:
        raise ReftError("the adapter does not name its base model; pass --base-model")
    extra: dict[str, Any] = {}
    if first.task_type == "seq_cls":
        extra["num_labels"] = _head_outputs(adapters[first_name], first)
    base = load_model(
        model_name,
        task_type=first.task_type,
        dtype=placement.dtype or first.dtype,
        revision=first.base_model_revision,
        trust_remote_code=trust_remote_code,
        pooling=first.pooling,
        **_map_kwargs(placement),
        **extra,
    )
    tokenizer = load_tokenizer(model_name, first.base_model_revision)
    if isinstance(first, LoraAdapterConfig):
        from reft_cli.engine.lora import LoraModel  # PEFT, imported only for a LoRA folder

        model: nn.Module = LoraModel.from_pretrained(adapters[first_name], base, config=first)
    else:
        model = ReftModel(base, records[first_name], first_name)  # type: ignore[arg-type]
        model.load_adapter_weights(adapters[first_name] / WEIGHTS_NAME)
        for name in list(adapters)[1:]:
            model.add_adapter(name, records[name])  # type: ignore[arg-type]
            model.load_adapter_weights(adapters[name] / WEIGHTS_NAME, name)
    return _finish(LoadedModel(model, tokenizer, first.task_type, records), device)


def load_base(
    name: str,
    *,
    task_type: str = "causal_lm",
    dtype: str = "float32",
    revision: str | None = None,
    num_labels: int | None = None,
    placement: Placement = Placement(),
    trust_remote_code: bool = False,
    pooling: str = "first",
) -> LoadedModel:
    """The plain base model (a baseline), in eval mode on the chosen device."""
    device = _target(placement)
    extra = {"num_labels": num_labels or 2} if task_type == "seq_cls" else {}
    model = load_model(
        name,
        task_type=task_type,
        dtype=placement.dtype or dtype,
        revision=revision,
        trust_remote_code=trust_remote_code,
        pooling=pooling,
        **_map_kwargs(placement),
        **extra,
    )
    tokenizer = load_tokenizer(name, revision)
    return _finish(LoadedModel(model, tokenizer, task_type), device)


def _map_kwargs(placement: Placement) -> dict[str, Any]:
    return {"device_map": placement.device_map} if placement.device_map is not None else {}


def _target(placement: Placement) -> torch.device | None:
    """The device to move the model to (checked before any weights load); None under a map."""
    return resolve_device(placement.device) if placement.device_map is None else None


def _finish(loaded: LoadedModel, device: torch.device | None) -> LoadedModel:
    """Eval mode, a pad token id, and every parameter and buffer on the chosen device."""
    base = loaded.base_model
    if base.config.pad_token_id is None:
        base.config.pad_token_id = loaded.tokenizer.pad_token_id
    if device is not None:
        loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _head_outputs(folder: Path, record: Record) -> int | None:
    """The classification head's output count: the LoRA record's, or the weights file's shapes."""
    if isinstance(record, LoraAdapterConfig):
        return record.num_labels
    from safetensors import safe_open

    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        return None  # loading the weights reports the missing file
    with safe_open(str(weights), "pt") as handle:
        shapes = [
            handle.get_slice(key).get_shape()
            for key in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
            if key.startswith("head.") and key.endswith("weight")
        ]
    outputs = [shape[0] for shape in shapes if len(shape) == 2]
    return min(outputs) if outputs else None
