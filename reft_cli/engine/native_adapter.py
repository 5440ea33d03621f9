"""A reft adapter folder read from its files alone, without the base model: what exporters need.

`NativeAdapter.read` checks that `reft_model.safetensors` holds exactly the tensors that
`reft_config.json` describes, with the right shapes, so an exporter never writes a broken copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from reft_cli.engine.adapter import INTERVENTION_PREFIX
from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.adapter_io import check_tensors, load_tensors
from reft_cli.engine.folder_names import CONFIG_NAME, WEIGHTS_NAME
from reft_cli.engine.interventions import build_intervention
from reft_cli.engine.reft_model import HEAD_PREFIX
from reft_cli.errors import ReftError


@dataclass
class NativeAdapter:
    folder: Path
    config: ReftConfig
    tensors: dict[str, Tensor]

    @classmethod
    def read(cls, folder: str | Path) -> NativeAdapter:
        folder = Path(folder)
        if not folder.is_dir():
            raise ReftError(f"adapter folder {folder} does not exist")
        config = ReftConfig.load(folder)
        tensors = load_tensors(folder / WEIGHTS_NAME)
        adapter = cls(folder, config, tensors)
        adapter._check()
        return adapter

    @property
    def groups(self) -> tuple[str, ...]:
        return self.config.position_spec.groups(self.config.share_weights)

    @property
    def hidden_size(self) -> int:
        if self.config.hidden_size is not None:
            return self.config.hidden_size
        matrices = [
            v for k, v in self.tensors.items() if k.startswith(INTERVENTION_PREFIX) and v.dim() == 2
        ]
        if not matrices:
            raise ReftError(f"{self.folder}: cannot tell the hidden size; the adapter is corrupt")
        return matrices[0].shape[-1]

    def intervention_state(self, index: int, group: str) -> dict[str, Tensor]:
        """One intervention's tensors under its own parameter names (`rotation.weight`, ...)."""
        prefix = f"{INTERVENTION_PREFIX}{index}.{group}."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def head(self) -> dict[str, Tensor]:
        """The classification head's tensors under the base model's parameter names."""
        return {
            k[len(HEAD_PREFIX) :]: v for k, v in self.tensors.items() if k.startswith(HEAD_PREFIX)
        }

    def intervention_parameters(self) -> int:
        return sum(v.numel() for k, v in self.tensors.items() if k.startswith(INTERVENTION_PREFIX))

    def head_parameters(self) -> int:
        return sum(v.numel() for v in self.head.values())

    def _check(self) -> None:
        expected: dict[str, tuple[int, ...]] = {}
        for index, site in enumerate(self.config.interventions):
            module = build_intervention(
                site.type, self.hidden_size, site.rank, act_fn=site.act_fn, add_bias=site.add_bias
            )
            for group in self.groups:
                for name, value in module.state_dict().items():
                    expected[f"{INTERVENTION_PREFIX}{index}.{group}.{name}"] = tuple(value.shape)
        check_tensors(
            {k: v for k, v in self.tensors.items() if not k.startswith(HEAD_PREFIX)},
            expected,
            source=self.folder / WEIGHTS_NAME,
            described_by=f"its {CONFIG_NAME}",
            advice="the adapter is corrupt",
            shape_advice=f"it disagrees with {CONFIG_NAME}: the adapter is corrupt",
        )
