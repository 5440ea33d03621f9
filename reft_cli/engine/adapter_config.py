"""`reft_config.json`: everything needed to rebuild an adapter on its base model.

Forward compatible in PEFT's way: keys from a newer format warn and are ignored, missing required keys
fail with a message that names them.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reft_cli.engine.adapter_io import ADAPTER_ADVICE, read_json_object
from reft_cli.engine.folder_names import CONFIG_NAME
from reft_cli.engine.interventions import INTERVENTIONS
from reft_cli.engine.positions import PositionSpec
from reft_cli.errors import ReftError, check_choice

FORMAT_VERSION = 1
COMPONENTS = ("block_output", "block_input", "attention_output", "mlp_output")
TASK_TYPES = ("causal_lm", "seq_cls")


@dataclass
class InterventionConfig:
    """One intervention site: a layer, a component of it, and the intervention trained there."""

    layer: int
    type: str = "loreft"
    component: str = "block_output"
    rank: int = 4
    dropout: float = 0.0
    act_fn: str | None = None
    add_bias: bool = False

    def validate(self) -> None:
        check_choice("intervention type", self.type, INTERVENTIONS)
        check_choice("component", self.component, COMPONENTS)
        if self.rank < 1:
            raise ReftError(f"rank must be a positive integer, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ReftError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class ReftConfig:
    """The adapter's identity: base model, interventions, positions and prompt format."""

    interventions: list[InterventionConfig]
    positions: str = "l1"
    share_weights: bool = True
    base_model: str | None = None
    base_model_revision: str | None = None
    task_type: str = "causal_lm"
    pooling: str = "first"  # seq_cls: what the head reads, see engine/pooling.py
    dtype: str = "float32"
    hidden_size: int | None = None
    num_layers: int | None = None
    prompt_template: str | None = None
    system_prompt: str | None = None  # for prompt_template: chat
    tokenizer: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.interventions = [
            iv
            if isinstance(iv, InterventionConfig)
            else from_dict(InterventionConfig, iv, "intervention")
            for iv in self.interventions
        ]
        check_choice("task_type", self.task_type, TASK_TYPES)
        if not self.interventions and self.task_type != "seq_cls":  # a probe is a head alone
            raise ReftError("an adapter needs at least one intervention")
        for iv in self.interventions:
            iv.validate()
        self.position_spec  # noqa: B018 - parse now so a bad string fails at construction

    @property
    def position_spec(self) -> PositionSpec:
        return PositionSpec.parse(self.positions)

    @classmethod
    def for_layers(
        cls,
        layers: str | int | list[int],
        num_layers: int,
        *,
        type: str = "loreft",
        component: str = "block_output",
        rank: int = 4,
        dropout: float = 0.0,
        act_fn: str | None = None,
        add_bias: bool = False,
        **config: Any,
    ) -> ReftConfig:
        """The common case: the same intervention at each of `layers` (`all`, a list, or `"2;10"`)."""
        sites = [
            InterventionConfig(layer, type, component, rank, dropout, act_fn, add_bias)
            for layer in parse_layers(layers, num_layers)
        ]
        return cls(interventions=sites, num_layers=num_layers, **config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: Path) -> None:
        from reft_cli.engine.adapter_io import atomic_write_text

        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(directory) / CONFIG_NAME, text)

    @classmethod
    def load(cls, directory: Path) -> ReftConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ReftError(
                f"{directory} is not a reft adapter: {CONFIG_NAME} is missing "
                "(point --adapter at a folder written by `reft train` or save_pretrained)"
            )
        return from_dict(cls, read_config_json(path), str(path))


def read_config_json(path: Path) -> dict[str, Any]:
    """An adapter's JSON record as a dict; a newer format_version warns (reft may be too old)."""
    data = read_json_object(path, ADAPTER_ADVICE)
    version = data.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        warnings.warn(
            f"{path} has format_version {version}, newer than this reft ({FORMAT_VERSION}); "
            "upgrade reft if loading fails",
            stacklevel=3,
        )
    return data


def parse_layers(layers: str | int | list[int], num_layers: int) -> list[int]:
    """`all`, an int, a list of ints, or a `;`/`,`-separated string, checked against the model."""
    if layers == "all":
        return list(range(num_layers))
    if isinstance(layers, int):
        chosen = [layers]
    elif isinstance(layers, str):
        try:
            chosen = [int(p) for p in layers.replace(",", ";").split(";") if p.strip()]
        except ValueError:
            chosen = []
    else:
        chosen = list(layers)
    if not chosen or not all(isinstance(x, int) and not isinstance(x, bool) for x in chosen):
        raise ReftError(f"invalid layers {layers!r}: use all, a list like [2, 10], or '2;10'")
    check_layers(chosen, num_layers)
    return chosen


def check_layers(layers: list[int], num_layers: int) -> None:
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise ReftError(
            f"layer {bad[0]} is out of range: the model has {num_layers} layers (0–{num_layers - 1})"
        )


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a dict: unknown keys warn (newer format), missing required ones fail."""
    if not isinstance(data, dict):
        raise ReftError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        warnings.warn(
            f"{where}: ignoring unknown keys {unknown} (written by a newer reft?)", stacklevel=3
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ReftError(
            f"{where}: missing required keys {missing}; the adapter is corrupt or incomplete"
        )
    try:
        return cls(**{k: v for k, v in data.items() if k in fields})
    except TypeError as err:
        raise ReftError(f"{where}: {err}") from err
