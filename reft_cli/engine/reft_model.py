"""ReftModel: one frozen transformers model holding any number of named ReFT adapters.

PEFT's convention: `load_adapter(name, path)`, `delete_adapter(name)`, `set_adapter(name)`, and a
per-row `adapter_names=[..., "base"]` in `forward` and `generate`. Each intervened site (layer,
component) has one persistent hook whatever the number of adapters, registered once and left in
place, so gradient checkpointing recomputes the same graph and other libraries' hooks are untouched.

A forward pass first sets a plan: for each adapter with rows in the batch, the positions it edits
(masked to its own rows), with each orthonormal R computed once. The hook then edits the hidden
states with tensor operations over the whole batch, one gather/edit/scatter per adapter present at
that site. The plan stays until the next forward, because a checkpointed backward re-runs the hooks
after the forward has returned. Generation arms the plan for the prompt pass only: the edited keys
and values live on in the KV cache, so every decode step runs the plain base model and each hook
returns at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reft_cli.engine.adapter import BASE, Adapter, Plan, rows_plan
from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.adapter_io import load_matching_tensors, save_tensors
from reft_cli.engine.architecture import Architecture
from reft_cli.engine.folder_names import WEIGHTS_NAME
from reft_cli.engine.positions import Positions
from reft_cli.engine.site_hooks import Site, SiteHooks, edit_positions
from reft_cli.errors import ReftError

HEAD_PREFIX = "head."
DEFAULT_ADAPTER = "default"


class ReftModel(nn.Module):
    """A base model plus named adapters of trainable interventions (and, for classification, a
    trainable head on the base model, which only a single adapter can own)."""

    weights_name = WEIGHTS_NAME  # the file `load_adapter_weights` reads in a checkpoint

    def __init__(
        self, model: nn.Module, config: ReftConfig, adapter_name: str = DEFAULT_ADAPTER
    ) -> None:
        super().__init__()
        self.model = model
        self.architecture = Architecture.of(model)
        for param in model.parameters():
            param.requires_grad_(False)
        self.adapters = nn.ModuleDict()
        self.active_adapter = adapter_name
        self.head_names: list[str] = []
        self.hooks = SiteHooks(self.architecture, self._edit, self._armed)
        self._plan: Plan | None = None
        self._enabled = True
        self.add_adapter(adapter_name, config)

    # ----------------------------------------------------------------- adapters
    @property
    def reft_config(self) -> ReftConfig:
        """The active adapter's record (what training saves and single-adapter code reads)."""
        return self.adapters[self.active_adapter].config

    @property
    def interventions(self) -> nn.ModuleList:
        """The active adapter's interventions: `interventions[site][group]`."""
        return self.adapters[self.active_adapter].interventions

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters)

    def add_adapter(self, name: str, config: ReftConfig) -> Adapter:
        """Attach a new adapter with freshly initialised interventions."""
        if name == BASE or not name:
            raise ReftError(f"{name!r} cannot name an adapter; '{BASE}' means the base model")
        if name in self.adapters:
            raise ReftError(f"an adapter named {name!r} is already loaded; delete it first")
        self._check_shape(config)
        if config.task_type == "seq_cls" and len(self.adapters):
            raise ReftError(
                "a classification adapter trains the base model's head, so it cannot share the "
                "model with other adapters; load it on its own base model"
            )
        config.hidden_size = self.architecture.hidden_size
        config.num_layers = self.architecture.num_layers
        if config.base_model is None:
            config.base_model = getattr(self.model, "name_or_path", None) or None
        adapter = Adapter(config, self.architecture)
        self.adapters[name] = adapter
        if config.task_type == "seq_cls":
            self.head_names = self._head_parameter_names()
            for head in self.head_names:
                self.model.get_parameter(head).requires_grad_(True)
        for index, site in enumerate(config.interventions):
            self.hooks.add((site.layer, site.component), name, index)
        return adapter

    def load_adapter(self, name: str, path: str | Path) -> Adapter:
        """Add the adapter saved in folder `path` under `name` (its record is read once)."""
        path = Path(path)
        if not path.is_dir():
            raise ReftError(f"adapter folder {path} does not exist")
        adapter = self.add_adapter(name, ReftConfig.load(path))
        try:
            self.load_adapter_weights(path / WEIGHTS_NAME, name)
        except ReftError:
            self.delete_adapter(name)
            raise
        return adapter

    def delete_adapter(self, name: str) -> None:
        """Detach adapter `name`; a hook whose site no adapter uses any more is removed."""
        if name not in self.adapters:
            raise ReftError(f"no adapter named {name!r}; loaded: {', '.join(self.adapters)}")
        if name == self.active_adapter and len(self.adapters) == 1:
            raise ReftError("cannot delete the only adapter; use unload() for the base model")
        del self.adapters[name]
        self.hooks.remove_adapter(name)
        if name == self.active_adapter:
            self.active_adapter = next(iter(self.adapters))

    def set_adapter(self, name: str) -> None:
        """The adapter that rows without an adapter name use, that training trains and saves."""
        self._require(name)
        self.active_adapter = name

    def _require(self, name: str) -> None:
        if name not in self.adapters:
            raise ReftError(
                f"unknown adapter name {name!r}; choose one of {', '.join([BASE, *self.adapters])}"
            )

    # ----------------------------------------------------------------- forward and hooks
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        prompt_lengths: Tensor | None = None,
        intervention_positions: Tensor | Mapping[str, Tensor] | None = None,
        adapter_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the base model with the interventions applied.

        Give either `prompt_lengths` (one per row; positions come from each adapter's config and
        each row's attention mask) or `intervention_positions` (explicit (B, K) indices, negative =
        unused slot; one tensor for every group or a mapping from group name to tensor; the active
        adapter only). `adapter_names` picks each row's adapter (`base`: none); without it every
        row uses the active adapter.
        """
        reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if reference is None:
            raise ReftError("forward needs input_ids or inputs_embeds")
        # Without a mask the base model gets none either: with `position_ids` that restart at 0,
        # transformers then reads the rows as packed sequences (training/packing.py).
        plan_mask = attention_mask
        if plan_mask is None:
            plan_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        self._plan = self._make_plan(
            plan_mask, prompt_lengths, intervention_positions, adapter_names
        )
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _make_plan(
        self,
        attention_mask: Tensor,
        prompt_lengths: Tensor | None,
        explicit: Tensor | Mapping[str, Tensor] | None,
        adapter_names: Sequence[str] | None,
    ) -> Plan:
        if (prompt_lengths is None) == (explicit is None):
            raise ReftError("pass exactly one of prompt_lengths or intervention_positions")
        if explicit is not None:
            if adapter_names is not None:
                raise ReftError("explicit intervention_positions serve the active adapter only")
            adapter = self.adapters[self.active_adapter]
            plan = {
                self.active_adapter: adapter.explicit_positions(explicit, attention_mask.device)
            }
        elif adapter_names is None:
            adapter = self.adapters[self.active_adapter]
            plan = {self.active_adapter: adapter.positions(prompt_lengths, attention_mask)}
        else:
            unknown = [n for n in adapter_names if n != BASE and n not in self.adapters]
            if unknown:
                self._require(unknown[0])
            plan = rows_plan(self.adapters, adapter_names, prompt_lengths, attention_mask)
        for name in plan:
            self.adapters[name].refresh()
        return plan

    def positions_for(self, prompt_lengths: Tensor, attention_mask: Tensor) -> dict[str, Positions]:
        """The positions the active adapter edits for a batch, by group."""
        return self.adapters[self.active_adapter].positions(prompt_lengths, attention_mask)

    def _armed(self) -> bool:
        return self._plan is not None and self._enabled

    def edit_site(self, key: Site, hidden: Tensor) -> Tensor:
        """The edits the running forward pass makes at `key`, applied to `hidden`: for a caller
        that feeds a site's states from a cache instead of running the module the hook sits on."""
        return self._edit(key, hidden) if self._armed() else hidden

    def _edit(self, key: Site, hidden: Tensor) -> Tensor:
        """Every planned adapter's edits at this site, each over the whole batch."""
        plan = self._plan
        assert plan is not None
        for name, index in self.hooks.users(key):
            positions = plan.get(name)
            if positions is None:
                continue
            rows = next(iter(positions.values())).index.shape[0]
            if hidden.shape[0] != rows and hidden.shape[0] % rows == 0:  # beams / sequences
                positions = {g: p.expand(hidden.shape[0] // rows) for g, p in positions.items()}
            for group, intervention in self.adapters[name].interventions[index].items():
                hidden = edit_positions(intervention, hidden, positions[group])
        return hidden

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        prompt_lengths: Tensor | None = None,
        intervention_positions: Tensor | Mapping[str, Tensor] | None = None,
        adapter_names: Sequence[str] | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """transformers' generate with prompt-only interventions, one adapter (or none) per row.

        The prefill pass edits the prompt's hidden states; the edited keys and values live on in the
        KV cache, so decode steps run the plain base model. Without a cache (`use_cache=False`) every
        step recomputes the sequence with the same prompt edits. Without `prompt_lengths`, each
        row's whole input is its prompt. Beams and `num_return_sequences` expand the positions.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        use_cache = generate_kwargs.get("use_cache", True)
        with self.prompt_edits(
            attention_mask,
            prompt_lengths,
            intervention_positions,
            adapter_names=adapter_names,
            use_cache=use_cache,
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
        adapter_names: Sequence[str] | None = None,
        use_cache: bool = True,
    ) -> Iterator[None]:
        """Arm the edits for one generate call: on the prompt pass only when decoding from a cache."""
        if self.training:
            raise ReftError("generate runs in eval mode; call model.eval() first")
        if prompt_lengths is None and intervention_positions is None:
            prompt_lengths = attention_mask.sum(dim=1)
        self._plan = self._make_plan(
            attention_mask, prompt_lengths, intervention_positions, adapter_names
        )
        handle = self.model.register_forward_hook(self._end_prefill) if use_cache else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
            self._plan = None

    def _end_prefill(self, _module: nn.Module, _args: tuple, _output: Any) -> None:
        """After the prompt pass, decode steps read the edited prompt from the KV cache only."""
        self._plan = None

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain base model inside this block (for baselines and comparisons)."""
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = True

    def unload(self) -> nn.Module:
        """Remove the hooks and give back the plain base model."""
        self.hooks.remove_all()
        return self.model

    # ----------------------------------------------------------------- training helpers
    def gradient_checkpointing_enable(self) -> None:
        """Non-reentrant checkpointing, so gradients reach R and W through the recomputed blocks."""
        self.model.activation_checkpointing_enable({"use_reentrant": False})

    def trainable_state(self, adapter_name: str | None = None) -> dict[str, Tensor]:
        """What an adapter file holds: intervention parameters and, for classification, the head."""
        name = adapter_name or self.active_adapter
        self._require(name)
        state = self.adapters[name].state()
        if self.adapters[name].config.task_type == "seq_cls":
            for head in self.head_names:
                state[HEAD_PREFIX + head] = self.model.get_parameter(head)
        return state

    def count_parameters(self) -> tuple[int, int, int]:
        """(active adapter's intervention parameters, head parameters, base model parameters)."""
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
    def save_pretrained(self, directory: str | Path, adapter_name: str | None = None) -> None:
        name = adapter_name or self.active_adapter
        save_adapter(Path(directory), self.trainable_state(name), self.adapters[name].config)

    @classmethod
    def from_pretrained(
        cls,
        adapter_dir: str | Path,
        base_model: nn.Module | None = None,
        adapter_name: str = DEFAULT_ADAPTER,
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
                pooling=config.pooling,
                **load_kwargs,
            )
        model = cls(base_model, config, adapter_name)
        model.load_adapter_weights(adapter_dir / WEIGHTS_NAME)
        return model

    def load_adapter_weights(self, path: Path, adapter_name: str | None = None) -> None:
        """An adapter's weights (the active one's by default) from an adapter file; every tensor
        must be there with its shape."""
        expected = self.trainable_state(adapter_name)
        tensors = load_matching_tensors(
            path, expected, "its reft_config.json", "the adapter is corrupt"
        )
        with torch.no_grad():
            for key, target in expected.items():
                target.copy_(tensors[key])


def get_reft_model(model: nn.Module, config: ReftConfig) -> ReftModel:
    """Wrap `model` with the interventions `config` describes (PEFT's get_peft_model, for ReFT)."""
    return ReftModel(model, config)


def save_adapter(directory: Path, state: dict[str, Tensor], config: ReftConfig) -> None:
    """Write `reft_model.safetensors` then `reft_config.json` (last: the folder is an adapter
    once it is there), each atomically."""
    save_tensors(directory / WEIGHTS_NAME, state, {"format": "pt", "library": "reft"})
    config.save(directory)
