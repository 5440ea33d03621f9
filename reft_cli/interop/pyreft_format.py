"""pyreft 0.1.0 / pyvene 0.1.8's adapter folder, and how each reft intervention maps onto it.

What `pyreft.ReftModel.save(folder)` writes, and `pyreft.ReftModel.load(folder, model)` reads:

    config.json          pyvene's IntervenableConfig as JSON. `representations`: one 14-field list per
                         intervention (layer, component, unit "pos", max_number_of_units 1,
                         low_rank_dimension, then nine fields reft leaves null); `intervention_types`:
                         strings like "<class 'pyreft.interventions.LoreftIntervention'>";
                         `sorted_keys`, `intervention_dimensions`, `intervention_constant_sources`, `mode`.
    intkey_<key>.bin     one `torch.save`d state dict per intervention. The key is
                         `layer_<L>_comp_<component>_unit_pos_nunit_1#<n>`, n counting the earlier
                         interventions at the same layer and component.
    pytorch_model.bin    trainable model parameters (a classification head), with `include_model=True`.

The state dict of each class, with R ∈ ℝ^{r×d} (orthonormal rows), W, b the learned source, W2 the
projection:

    LoreftIntervention                 weight (W), bias (b), rotate_layer (Rᵀ, d×r)
    DireftIntervention, Consreft..., Lobireft...
                                       rotate_layer.parametrizations.weight.original (d×r) and
                                       rotate_layer.parametrizations.weight.0.base (d×d): torch's
                                       orthogonal parametrization, Rᵀ = base @ householder(original);
                                       learned_source.weight/.bias (W, b) or learned_source (b);
                                       embed_dim, interchange_dim (integer buffers)
    NoreftIntervention, Nodireft...    proj_layer.weight (+ .bias), learned_source.weight/.bias,
                                       embed_dim, interchange_dim

pyreft's loader does not record positions, dropout, activation, add_bias or dtype.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from reft_cli.engine.adapter_config import COMPONENTS
from reft_cli.engine.adapter_io import read_json_object
from reft_cli.engine.interventions import orthonormal_rows
from reft_cli.errors import ReftError

CONFIG_FILE = "config.json"
HEAD_FILE = "pytorch_model.bin"
CLASS_MODULE = "pyreft.interventions"
TRANSFORMERS_VERSION = "4.45.1"  # what pyreft 0.1.0 pins; pyvene records it in config.json

# reft type → pyreft class (DESIGN.md's table). The only names import resolves: never a name from a file.
PYREFT_CLASSES = {
    "loreft": "LoreftIntervention",
    "noreft": "NoreftIntervention",
    "direft": "NodireftIntervention",
    "orth_direft": "DireftIntervention",
    "consreft": "ConsreftIntervention",
    "lobireft": "LobireftIntervention",
}
REFT_TYPES = {cls: name for name, cls in PYREFT_CLASSES.items()}

_ORIGINAL = "rotate_layer.parametrizations.weight.original"
_BASE = "rotate_layer.parametrizations.weight.0.base"
_DIMS = ("embed_dim", "interchange_dim")
# reft name → pyreft name, per type; rotation.weight is handled apart (pyreft stores Rᵀ).
_RENAMES = {
    "loreft": {"source.weight": "weight", "source.bias": "bias"},
    "orth_direft": {"source.weight": "learned_source.weight", "source.bias": "learned_source.bias"},
    "consreft": {"source": "learned_source"},
    "lobireft": {"source": "learned_source"},
    "noreft": {
        "proj.weight": "proj_layer.weight",
        "proj.bias": "proj_layer.bias",
        "source.weight": "learned_source.weight",
        "source.bias": "learned_source.bias",
    },
}
_RENAMES["direft"] = _RENAMES["noreft"]
_PARAMETRIZED = ("orth_direft", "consreft", "lobireft")
_CLASS_STRING = re.compile(r"<class '(?P<path>[\w.]+)'>")


@dataclass(frozen=True)
class Site:
    """Where one pyreft intervention sits, and its type in reft's names."""

    layer: int
    component: str
    type: str
    rank: int | None = None


# ----------------------------------------------------------------- names and config.json
def class_string(type_name: str) -> str:
    return f"<class '{CLASS_MODULE}.{PYREFT_CLASSES[type_name]}'>"


def type_from_class_string(text: Any, where: str) -> str:
    """reft's type for a pyreft class string, through the allowlist; anything else is an error."""
    match = _CLASS_STRING.fullmatch(text) if isinstance(text, str) else None
    module, _, name = match["path"].rpartition(".") if match else ("", "", str(text))
    if match is None or module != CLASS_MODULE or name not in REFT_TYPES:
        raise ReftError(
            f"{where}: unknown intervention class {text!r}; reft reads pyreft's "
            f"{', '.join(f'{CLASS_MODULE}.{c}' for c in REFT_TYPES)}"
        )
    return REFT_TYPES[name]


def intervention_keys(sites: Iterable[Site]) -> list[str]:
    """pyvene's key per intervention, in order: `#n` counts earlier ones at the same place."""
    seen: dict[str, int] = {}
    keys = []
    for site in sites:
        stem = f"layer_{site.layer}_comp_{site.component}_unit_pos_nunit_1"
        seen[stem] = seen.get(stem, -1) + 1
        keys.append(f"{stem}#{seen[stem]}")
    return keys


def state_file_name(key: str) -> str:
    return f"intkey_{key}.bin"


def config_json(sites: list[Site], embed_dim: int) -> str:
    """config.json as pyvene's IntervenableConfig.save_pretrained writes it (sorted keys)."""
    data = {
        "intervention_constant_sources": [True] * len(sites),
        "intervention_dimensions": [embed_dim] * len(sites),
        "intervention_types": [class_string(s.type) for s in sites],
        "mode": "parallel",
        "representations": [[s.layer, s.component, "pos", 1, s.rank, *[None] * 9] for s in sites],
        "sorted_keys": intervention_keys(sites),
        "transformers_version": TRANSFORMERS_VERSION,
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


_REPR_FIELDS = (
    "layer",
    "component",
    "unit",
    "max_number_of_units",
    "low_rank_dimension",
    "intervention_type",
    "intervention",
    "subspace_partition",
    "group_key",
    "intervention_link_key",
    "moe_key",
    "source_representation",
    "hidden_source_representation",
    "latent_dim",
)
_REPR_DEFAULTS = dict(zip(_REPR_FIELDS, (0, "block_output", "pos", 1), strict=False))


def read_config(folder: Path) -> tuple[list[Site], list[int | None]]:
    """The sites a pyreft folder's config.json describes, and the hidden size recorded for each."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("intkey_*.bin"))[:1]
        hint = (
            f"it holds {found[0]} but no config.json, like pyreft's trainer checkpoints "
            "(checkpoint-*/intervenable_model), which keep weights only. "
            if found
            else ""
        )
        raise ReftError(
            f"{folder} is not a pyreft adapter folder: {CONFIG_FILE} is missing; {hint}Recover it "
            "with pyreft: build the ReftModel as in training (pyreft.get_reft_model), call "
            f"reft_model.load_intervention('{folder}', include_model=True), then "
            "reft_model.save('NEW_DIR') and import NEW_DIR"
        )
    data = read_json_object(path, "save the adapter again with pyreft")
    reps = data.get("representations")
    classes = data.get("intervention_types")
    if not isinstance(reps, list) or not reps:
        raise ReftError(f"{path} has no representations: it does not describe any intervention")
    if not isinstance(classes, list) or len(classes) != len(reps):
        raise ReftError(
            f"{path}: intervention_types must list one class per representation "
            f"({len(reps)}), got {classes!r}"
        )
    dims = data.get("intervention_dimensions") or [None] * len(reps)
    if not isinstance(dims, list) or len(dims) != len(reps):
        raise ReftError(f"{path}: intervention_dimensions must have {len(reps)} entries")
    sites = [
        _site(rep, cls, f"{path} representation {i}")
        for i, (rep, cls) in enumerate(zip(reps, classes, strict=True))
    ]
    return sites, [d if isinstance(d, int) else None for d in dims]


def _site(rep: Any, class_text: Any, where: str) -> Site:
    if isinstance(rep, list) and len(rep) <= len(_REPR_FIELDS):
        fields = dict(_REPR_DEFAULTS, **dict(zip(_REPR_FIELDS, rep, strict=False)))
    elif isinstance(rep, dict) and set(rep) <= set(_REPR_FIELDS):
        fields = {**_REPR_DEFAULTS, **rep}
    else:
        raise ReftError(f"{where}: expected pyvene's representation fields, got {rep!r}")
    type_name = type_from_class_string(class_text, where)
    layer, component, rank = fields["layer"], fields["component"], fields["low_rank_dimension"]
    unsupported = {
        name: fields.get(name)
        for name in ("subspace_partition", "intervention_link_key", "moe_key", "latent_dim")
        if fields.get(name) is not None
    }
    if unsupported:
        raise ReftError(f"{where}: reft does not support pyvene's {unsupported}")
    if fields["unit"] != "pos" or fields["max_number_of_units"] != 1:
        raise ReftError(
            f"{where}: unit {fields['unit']!r} × {fields['max_number_of_units']} is not a ReFT "
            "position intervention (reft reads unit 'pos', max_number_of_units 1)"
        )
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ReftError(f"{where}: layer must be a non-negative integer, got {layer!r}")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ReftError(f"{where}: low_rank_dimension must be a positive integer, got {rank!r}")
    if component not in COMPONENTS:
        raise ReftError(
            f"{where}: component {component!r} is not one reft intervenes on "
            f"({', '.join(COMPONENTS)})"
        )
    return Site(layer, component, type_name, rank)


# ----------------------------------------------------------------- state files
def write_state_file(path: Path, state: dict[str, Tensor]) -> None:
    """A state file as pyvene saves it: a torch.save'd dict of CPU tensors."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)


def read_state_file(path: Path) -> dict[str, Tensor]:
    """A pyreft state file, unpickled with weights_only=True: a plain dict of tensors, or an error."""
    if not path.is_file():
        raise ReftError(
            f"{path.parent} is incomplete: {path.name} is missing (config.json lists it)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses arbitrary objects with an UnpicklingError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReftError(
            f"{path} is not a plain tensor state file ({first}); reft reads pyreft files "
            "only as dictionaries of tensors and never unpickles other objects"
        ) from err
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()
    ):
        raise ReftError(
            f"{path} holds a {type(data).__name__}, not a dictionary of named tensors; "
            "it is not a pyreft intervention state file"
        )
    return dict(data)


# ----------------------------------------------------------------- reft ↔ pyreft state
def to_pyreft_state(type_name: str, state: dict[str, Tensor], embed_dim: int) -> dict[str, Tensor]:
    """An intervention's reft state (`rotation.weight`, `source.weight`, ...) in pyreft's names.

    R is exported orthonormalised, so pyreft's forward uses the same R as reft's. For the classes
    under torch's orthogonal parametrization, `original` is −I (whose Householder map is exactly
    the first r columns of the identity) and `base` holds Rᵀ in its first r columns, completed to an
    orthogonal d×d matrix, so pyreft computes Rᵀ bit for bit and can keep training from it.
    """
    renames = _RENAMES[type_name]
    out = {renames[k]: v.detach().float() for k, v in state.items() if k != "rotation.weight"}
    if "rotation.weight" in state:
        rot_t = orthonormal_rows(state["rotation.weight"].detach()).T.contiguous()
        if type_name == "loreft":
            out["rotate_layer"] = rot_t
        else:
            out[_ORIGINAL], out[_BASE] = _parametrized(rot_t)
    if type_name != "loreft":  # pyvene's buffers; pyreft's LoReFT state omits them
        for name in _DIMS:
            out[name] = torch.tensor(embed_dim)
    return out


def from_pyreft_state(type_name: str, state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """The reft state of one pyreft intervention (fp32), with its keys checked."""
    renames = {v: k for k, v in _RENAMES[type_name].items()}
    rotation = {"rotate_layer"} if type_name == "loreft" else set()
    if type_name in _PARAMETRIZED:
        rotation = {_ORIGINAL, _BASE}
    required = set(renames) | rotation
    optional = set(_DIMS) | ({"proj_layer.bias"} if type_name in ("noreft", "direft") else set())
    required -= optional
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - required - optional)
    if missing or unexpected:
        raise ReftError(
            f"{where}: not a {PYREFT_CLASSES[type_name]} state (missing {missing}, unexpected "
            f"{unexpected}); is the class in config.json right?"
        )
    out = {renames[k]: v.float() for k, v in state.items() if k in renames}
    if type_name == "loreft":
        out["rotation.weight"] = _matrix(state["rotate_layer"], where, "rotate_layer").T
    elif type_name in _PARAMETRIZED:
        original = _matrix(state[_ORIGINAL], where, _ORIGINAL)
        base = _matrix(state[_BASE], where, _BASE)
        if base.shape != (original.shape[0], original.shape[0]):
            raise ReftError(
                f"{where}: {_BASE} has shape {tuple(base.shape)}, expected "
                f"({original.shape[0]}, {original.shape[0]})"
            )
        out["rotation.weight"] = (base @ _orthogonal_map(original)).T
    return {k: v.contiguous() for k, v in out.items()}


def pyreft_name(type_name: str, reft_name: str) -> str:
    """The key in pyreft's state file that holds reft's parameter `reft_name`."""
    if reft_name == "rotation.weight":
        return "rotate_layer" if type_name == "loreft" else "rotate_layer.parametrizations.weight"
    return _RENAMES[type_name].get(reft_name, reft_name)


def recorded_dims(state: dict[str, Tensor]) -> set[int]:
    """The hidden sizes a pyreft state file records in its embed_dim/interchange_dim buffers."""
    return {int(state[k]) for k in _DIMS if k in state and state[k].numel() == 1}


def _matrix(value: Tensor, where: str, key: str) -> Tensor:
    if value.dim() != 2:
        raise ReftError(f"{where}: {key} must be a matrix, got shape {tuple(value.shape)}")
    return value.float()


def _parametrized(rot_t: Tensor) -> tuple[Tensor, Tensor]:
    """(original, base) for torch's orthogonal parametrization of a d×r matrix equal to `rot_t`."""
    d, r = rot_t.shape
    original = torch.zeros(d, r)
    original.diagonal().fill_(-1.0)
    complete, _ = torch.linalg.qr(rot_t, mode="complete")
    return original, torch.cat([rot_t, complete[:, r:]], dim=1).contiguous()


def _orthogonal_map(original: Tensor) -> Tensor:
    """The d×r orthonormal Q torch's `orthogonal` parametrization makes from `original`.

    Householder for a tall matrix, the matrix exponential of the skew part for a square one (torch's
    defaults), before the multiplication by `base`.
    """
    n, k = original.shape
    if n < k:
        raise ReftError(f"rotation of shape {(n, k)}: the rank must not exceed the hidden size")
    if n == k:
        lower = original.tril()
        return torch.matrix_exp(lower - lower.T)
    reflectors = original.tril(diagonal=-1)
    tau = 2.0 / (1.0 + (reflectors * reflectors).sum(dim=-2))
    q = torch.linalg.householder_product(reflectors, tau)
    return q * original.diagonal().int().unsqueeze(-2)
