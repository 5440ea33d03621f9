"""ReftModel: a frozen transformers model with interventions attached through persistent hooks.

Hooks are registered once and stay registered, so gradient checkpointing recomputes the same graph
and other libraries' hooks are left alone. Each forward pass sets the positions to edit and computes
each orthonormal R once; the hooks gather the selected hidden states, edit them, and scatter the
change back out of place. Positions and R stay in place until the next forward, because a
checkpointed backward re-runs the hooks after the forward has returned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.adapter_io import load_matching_tensors, save_tensors
from reft_cli.engine.architecture import Architecture
from reft_cli.engine.folder_names import WEIGHTS_NAME
from reft_cli.engine.interventions import Intervention, Rotation, build_intervention
from reft_cli.engine.positions import Positions, compute_positions
from reft_cli.errors import ReftError

INTERVENTION_PREFIX = "interventions."
HEAD_PREFIX = "head."


class ReftModel(nn.Module):
    """A base model plus trainable interventions (and, for classification, a trainable head)."""

    weights_name = WEIGHTS_NAME  # the file `load_adapter_weights` reads in a checkpoint

    def __init__(self, model: nn.Module, config: ReftConfig) -> None:
        super().__init__()
        self.model = model
        self.reft_config = config
        self.architecture = Architecture.of(model)
        self._check_shape(config)
        config.hidden_size = self.architecture.hidden_size
        config.num_layers = self.architecture.num_layers
        if config.base_model is None:
            config.base_model = getattr(model, "name_or_path", None) or None

        for param in model.parameters():
            param.requires_grad_(False)
        self.head_names = self._head_parameter_names() if config.task_type == "seq_cls" else []
        for name in self.head_names:
            model.get_parameter(name).requires_grad_(True)

        groups = config.position_spec.groups(config.share_weights)
        device = next(model.parameters()).device
        self.interventions = nn.ModuleList(
            nn.ModuleDict(
                {
                    group: build_intervention(
                        site.type,
                        self.architecture.hidden_size,
                        site.rank,
                        dropout=site.dropout,
                        act_fn=site.act_fn,
                        add_bias=site.add_bias,
                    )
                    for group in groups
                }
            )
            for site in config.interventions
        ).to(device)
        self._rotations = [m for m in self.interventions.modules() if isinstance(m, Rotation)]
        self._positions: dict[str, Positions] | None = None
        self._enabled = True
        self._handles: list[RemovableHandle] = [
            self._register_hook(index, site.layer, site.component)
            for index, site in enumerate(config.interventions)
        ]

    # ----------------------------------------------------------------- forward and hooks
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        prompt_lengths: Tensor | None = None,
        intervention_positions: Tensor | Mapping[str, Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the base model with the interventions applied.

        Give either `prompt_lengths` (one per row; positions come from the config and each row's
        attention mask) or `intervention_positions` (explicit (B, K) indices, negative = unused slot;
        one tensor for every group or a mapping from group name to tensor).
        """
        reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if reference is None:
            raise ReftError("forward needs input_ids or inputs_embeds")
        if attention_mask is None:
            attention_mask = torch.ones(
                reference.shape[:2], dtype=torch.long, device=reference.device
            )
        self._positions = self._resolve_positions(
            attention_mask, prompt_lengths, intervention_positions
        )
        for rotation in self._rotations:
            rotation.refresh()
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _resolve_positions(
        self,
        attention_mask: Tensor,
        prompt_lengths: Tensor | None,
        explicit: Tensor | Mapping[str, Tensor] | None,
    ) -> dict[str, Positions]:
        groups = self.reft_config.position_spec.groups(self.reft_config.share_weights)
        if (prompt_lengths is None) == (explicit is None):
            raise ReftError("pass exactly one of prompt_lengths or intervention_positions")
        if prompt_lengths is not None:
            return self.positions_for(prompt_lengths, attention_mask)
        if not isinstance(explicit, Mapping):
            explicit = dict.fromkeys(groups, explicit)
        missing = [g for g in groups if g not in explicit]
        if missing:
            raise ReftError(
                f"intervention_positions lacks groups {missing}; this adapter has {list(groups)}"
            )
        return {
            g: Positions.from_explicit(torch.as_tensor(explicit[g], device=attention_mask.device))
            for g in groups
        }

    def positions_for(self, prompt_lengths: Tensor, attention_mask: Tensor) -> dict[str, Positions]:
        """The positions this adapter edits for a batch, by group."""
        config = self.reft_config
        return compute_positions(
            config.position_spec, config.share_weights, prompt_lengths, attention_mask
        )

    def _register_hook(self, index: int, layer: int, component: str) -> RemovableHandle:
        module, kind = self.architecture.site(layer, component)
        if kind == "input":

            def pre_hook(
                _module: nn.Module, args: tuple, kwargs: dict
            ) -> tuple[tuple, dict] | None:
                if args:
                    return (self._edit(index, args[0]), *args[1:]), kwargs
                if "hidden_states" in kwargs:
                    return args, {
                        **kwargs,
                        "hidden_states": self._edit(index, kwargs["hidden_states"]),
                    }
                raise ReftError(f"cannot find the hidden states passed to layer {layer}")

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
            if isinstance(output, Tensor):
                return self._edit(index, output)
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                return (self._edit(index, output[0]), *output[1:])
            raise ReftError(
                f"unexpected output type {type(output).__name__} at layer {layer} {component}"
            )

        return module.register_forward_hook(hook)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        prompt_lengths: Tensor | None = None,
        intervention_positions: Tensor | Mapping[str, Tensor] | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """transformers' generate with prompt-only interventions.

        The prefill pass edits the prompt's hidden states; the edited keys and values live on in the
        KV cache, so decode steps run the plain base model. Without a cache (`use_cache=False`) every
        step recomputes the sequence with the same prompt edits. Without `prompt_lengths`, each row's
        whole input is its prompt. Beams and `num_return_sequences` expand the positions.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        use_cache = generate_kwargs.get("use_cache", True)
        with self.prompt_edits(
            attention_mask, prompt_lengths, intervention_positions, use_cache=use_cache
        ):
            return self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs
            )

    @contextmanager
    def prompt_edits(
        self,
        attention_mask: Tensor,
        prompt_lengths: Tensor | None = None,
        intervention_positions: Tensor | Mapping[str, Tensor] | None = None,
        *,
        rows: Tensor | None = None,
        use_cache: bool = True,
    ) -> Iterator[None]:
        """Arm this adapter's edits for one generate call on the shared base model.

        `rows` (a bool mask over the batch) limits the edits to those rows, so several adapters on
        one base model can serve one batch, each row getting only its own adapter's edits.
        """
        if self.training:
            raise ReftError("generate runs in eval mode; call model.eval() first")
        if prompt_lengths is None and intervention_positions is None:
            prompt_lengths = attention_mask.sum(dim=1)
        positions = self._resolve_positions(attention_mask, prompt_lengths, intervention_positions)
        if rows is not None:
            positions = {
                g: Positions(p.index, p.mask & rows[:, None]) for g, p in positions.items()
            }
        self._positions = positions
        for rotation in self._rotations:
            rotation.refresh()
        handle = self.model.register_forward_hook(self._end_prefill) if use_cache else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
            self._positions = None

    def _end_prefill(self, _module: nn.Module, _args: tuple, _output: Any) -> None:
        """After the prompt pass, decode steps read the edited prompt from the KV cache only."""
        self._positions = None

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain base model inside this block (for baselines and comparisons)."""
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = True

    def _edit(self, index: int, hidden: Tensor) -> Tensor:
        positions = self._positions
        if positions is None or not self._enabled:
            return hidden
        rows = next(iter(positions.values())).index.shape[0]
        if hidden.shape[0] != rows and hidden.shape[0] % rows == 0:  # beams / several sequences
            positions = {g: p.expand(hidden.shape[0] // rows) for g, p in positions.items()}
        for group, intervention in self.interventions[index].items():
            hidden = _apply(intervention, hidden, positions[group])
        return hidden

    def unload(self) -> nn.Module:
        """Remove the hooks and give back the plain base model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model

    # ----------------------------------------------------------------- training helpers
    def gradient_checkpointing_enable(self) -> None:
        """Non-reentrant checkpointing, so gradients reach R and W through the recomputed blocks."""
        self.model.activation_checkpointing_enable({"use_reentrant": False})

    def trainable_state(self) -> dict[str, Tensor]:
        """What an adapter file holds: intervention parameters and, for classification, the head."""
        state = {INTERVENTION_PREFIX + k: v for k, v in self.interventions.state_dict().items()}
        for name in self.head_names:
            state[HEAD_PREFIX + name] = self.model.get_parameter(name)
        return state

    def count_parameters(self) -> tuple[int, int, int]:
        """(intervention parameters, head parameters, base model parameters)."""
        interventions = sum(p.numel() for p in self.interventions.parameters())
        head = sum(self.model.get_parameter(n).numel() for n in self.head_names)
        base = sum(p.numel() for p in self.model.parameters())
        return interventions, head, base

    def print_trainable_parameters(self) -> None:
        interventions, head, base = self.count_parameters()
        line = (
            f"trainable intervention params: {interventions:,} || model params: {base:,} "
            f"|| trainable%: {100 * interventions / base:.4f}"
        )
        if head:
            line += f" || classification head params: {head:,}"
        print(line)

    def _head_parameter_names(self) -> list[str]:
        """Parameters outside the backbone: the task head that classification trains."""
        prefix = getattr(self.model, "base_model_prefix", "") + "."
        names = [n for n, _ in self.model.named_parameters() if not n.startswith(prefix)]
        if not names:
            raise ReftError(
                f"{type(self.model).__name__} has no head outside its backbone to train"
            )
        return names

    def _check_shape(self, config: ReftConfig) -> None:
        arch = self.architecture
        if config.hidden_size not in (None, arch.hidden_size) or config.num_layers not in (
            None,
            arch.num_layers,
        ):
            raise ReftError(
                f"adapter was made for a model with hidden size {config.hidden_size} and "
                f"{config.num_layers} layers, but the base model has {arch.hidden_size} and "
                f"{arch.num_layers}; use the base model the adapter was trained on"
            )

    # ----------------------------------------------------------------- save and load
    def save_pretrained(self, directory: str | Path) -> None:
        save_adapter(Path(directory), self.trainable_state(), self.reft_config)

    @classmethod
    def from_pretrained(
        cls,
        adapter_dir: str | Path,
        base_model: nn.Module | None = None,
        **load_kwargs: Any,
    ) -> ReftModel:
        """Rebuild an adapter (or a checkpoint folder) on `base_model`, or on the model it names."""
        adapter_dir = Path(adapter_dir)
        if not adapter_dir.is_dir():
            raise ReftError(f"adapter folder {adapter_dir} does not exist")
        config = ReftConfig.load(adapter_dir)
        if base_model is None:
            from reft_cli.engine.base_models import load_model

            base_model = load_model(
                config.base_model,
                task_type=config.task_type,
                dtype=config.dtype,
                revision=config.base_model_revision,
                **load_kwargs,
            )
        model = cls(base_model, config)
        model.load_adapter_weights(adapter_dir / WEIGHTS_NAME)
        return model

    def load_adapter_weights(self, path: Path) -> None:
        expected = self.trainable_state()
        tensors = load_matching_tensors(
            path, expected, "its reft_config.json", "the adapter is corrupt"
        )
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(tensors[name])


def get_reft_model(model: nn.Module, config: ReftConfig) -> ReftModel:
    """Wrap `model` with the interventions `config` describes (PEFT's get_peft_model, for ReFT)."""
    return ReftModel(model, config)


def _apply(intervention: Intervention, hidden: Tensor, positions: Positions) -> Tensor:
    """hidden with the selected rows replaced by their edit; unselected rows are untouched bits."""
    if positions.index.shape[0] != hidden.shape[0]:
        raise ReftError(
            f"positions are for {positions.index.shape[0]} rows but the batch has {hidden.shape[0]}"
        )
    index = positions.index[..., None].expand(-1, -1, hidden.shape[-1])
    selected = hidden.gather(1, index)
    change = intervention(selected) - selected.float()
    change = torch.where(positions.mask[..., None], change, 0.0).to(hidden.dtype)
    return hidden.scatter_add(1, index, change)


def save_adapter(directory: Path, state: dict[str, Tensor], config: ReftConfig) -> None:
    """Write `reft_model.safetensors` then `reft_config.json` (last: the folder is an adapter
    once it is there), each atomically."""
    save_tensors(directory / WEIGHTS_NAME, state, {"format": "pt", "library": "reft"})
    config.save(directory)
