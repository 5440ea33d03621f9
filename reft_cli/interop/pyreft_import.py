"""`reft import`: a pyreft adapter folder into reft's native format, checked against the base model.

pyreft's files say where each intervention sits, its class and its weights, but not the positions,
dropout or activation it was trained with: those come from options, else from reft's own files
when the folder was written by `reft export` (whose weights are then used bit for bit, after
checking that they agree with the pyreft files), else from pyreft's defaults, and the result says
which were assumed. Tied or untied weights follow pyreft's layout: untied adapters list every
prefix intervention, then every suffix intervention, at the same sites.

State files are read with `torch.load(weights_only=True)` and must be dictionaries of tensors;
intervention classes resolve through an allowlist. Shapes are checked against the base model built
on the meta device from its config, without reading its weights. OUT is written whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from reft_cli.engine.adapter import INTERVENTION_PREFIX
from reft_cli.engine.adapter_config import InterventionConfig, ReftConfig
from reft_cli.engine.adapter_io import check_tensors
from reft_cli.engine.folder_names import CONFIG_NAME, WEIGHTS_NAME
from reft_cli.engine.interventions import orthonormal_rows
from reft_cli.engine.native_adapter import NativeAdapter
from reft_cli.engine.positions import PositionSpec
from reft_cli.engine.reft_model import HEAD_PREFIX, ReftModel, save_adapter
from reft_cli.engine.staged_dir import refuse_existing, staged_dir
from reft_cli.errors import ReftError
from reft_cli.interop.pyreft_format import (
    HEAD_FILE,
    Site,
    from_pyreft_state,
    intervention_keys,
    pyreft_name,
    read_config,
    read_state_file,
    recorded_dims,
    state_file_name,
)

DEFAULT_POSITIONS = "f1+l1"  # pyreft's default in its example scripts
ACTIVATED = ("loreft", "noreft", "direft", "orth_direft")  # types whose formula has act()


@dataclass
class ImportOptions:
    pyreft_dir: Path
    out: Path
    base_model: str | None = None
    positions: str | None = None
    share_weights: bool | None = None
    dropout: float | None = None
    act_fn: str | None = None
    task_type: str | None = None


@dataclass
class ImportResult:
    out: Path
    config: ReftConfig
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        count = len(self.config.interventions)
        weights = "tied" if self.config.share_weights else "untied"
        lines = [
            f"wrote {self.out}: {count} {'site' if count == 1 else 'sites'} on "
            f"{self.config.base_model}, positions {self.config.positions} ({weights} weights)"
        ]
        return lines + [f"note: {note}" for note in self.notes]


@dataclass
class _Entry:
    """One pyreft intervention, decoded into reft's parameter names."""

    site: Site
    add_bias: bool
    state: dict[str, Tensor]
    file: str
    hidden_sizes: set[int]

    @property
    def signature(self) -> tuple:
        s = self.site
        return (s.layer, s.component, s.type, s.rank, self.add_bias)


def import_pyreft(options: ImportOptions) -> ImportResult:
    folder, out = Path(options.pyreft_dir), Path(options.out)
    refuse_existing(out)
    if not folder.is_dir():
        raise ReftError(f"pyreft folder {folder} does not exist")
    entries = _read_entries(folder)
    head = _read_head(folder)
    notes: list[str] = []
    side = _side_adapter(folder, entries, notes)
    config = _reft_config(options, entries, head, side, notes)
    groups = config.position_spec.groups(config.share_weights)
    state, files = _native_state(entries, groups, len(config.interventions))

    from reft_cli.engine.skeleton import model_skeleton

    skeleton = model_skeleton(config.base_model, config.task_type, config.base_model_revision)
    _check_hidden_size(folder, entries, skeleton, config.base_model)
    model = ReftModel(skeleton, config)  # on the meta device: checks sites and gives every shape
    state = _with_head(model, state, head, notes)
    if side is not None:
        state = _prefer_reft_weights(state, side.tensors, notes)
    _check_shapes(model, state, files)
    with staged_dir(out) as tmp:
        save_adapter(tmp, state, config)
    return ImportResult(out, config, notes)


# ----------------------------------------------------------------- reading
def _read_entries(folder: Path) -> list[_Entry]:
    sites, dims = read_config(folder)
    entries = []
    for site, dim, key in zip(sites, dims, intervention_keys(sites), strict=True):
        name = state_file_name(key)
        raw = read_state_file(folder / name)
        state = from_pyreft_state(site.type, raw, str(folder / name))
        matrix = state.get("rotation.weight", state.get("proj.weight"))
        rank, hidden = matrix.shape
        if site.rank is not None and site.rank != rank:
            raise ReftError(
                f"{folder / name}: config.json says low_rank_dimension {site.rank} but the "
                f"weights have rank {rank}"
            )
        hidden_sizes = {hidden} | recorded_dims(raw) | ({dim} if dim else set())
        entries.append(
            _Entry(
                Site(site.layer, site.component, site.type, rank),
                "proj.bias" in state,
                state,
                name,
                hidden_sizes,
            )
        )
    return entries


def _read_head(folder: Path) -> dict[str, Tensor]:
    path = folder / HEAD_FILE
    return read_state_file(path) if path.is_file() else {}


def _side_adapter(folder: Path, entries: list[_Entry], notes: list[str]) -> NativeAdapter | None:
    """reft's own files that `reft export` leaves beside the pyreft ones, if they still fit them."""
    if not ((folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()):
        return None
    try:
        side = NativeAdapter.read(folder)
    except ReftError as err:
        notes.append(f"ignored reft's files beside the pyreft ones: {err}")
        return None
    expected = [
        (s.layer, s.component, s.type, s.rank, s.add_bias)
        for _group in side.groups
        for s in side.config.interventions
    ]
    if expected != [e.signature for e in entries]:
        notes.append(f"ignored {CONFIG_NAME}: it describes other interventions than config.json")
        return None
    return side


# ----------------------------------------------------------------- the native config
def _reft_config(
    options: ImportOptions,
    entries: list[_Entry],
    head: dict[str, Tensor],
    side: NativeAdapter | None,
    notes: list[str],
) -> ReftConfig:
    recorded = side.config if side is not None else None
    base_model = options.base_model or (recorded.base_model if recorded else None)
    if not base_model:
        raise ReftError("pass --base-model: the model the pyreft adapter was trained on")

    positions = options.positions or (recorded.positions if recorded else None)
    if positions is None:
        positions = DEFAULT_POSITIONS
        notes.append(
            f"pyreft does not record positions: assumed {DEFAULT_POSITIONS} (pyreft's default); "
            "pass --positions to change"
        )
    spec = PositionSpec.parse(positions)
    share = _share_weights(options.share_weights, recorded, entries, spec, notes)
    groups = spec.groups(share)
    if len(entries) % len(groups):
        raise ReftError(_untied_mismatch(len(entries)))
    count = len(entries) // len(groups)
    chunks = [entries[i * count : (i + 1) * count] for i in range(len(groups))]
    if any([e.signature for e in c] != [e.signature for e in chunks[0]] for c in chunks):
        raise ReftError(_untied_mismatch(len(entries)))

    task_type = options.task_type or (recorded.task_type if recorded else None)
    task_type = task_type or ("seq_cls" if head else "causal_lm")
    same_layout = recorded is not None and groups == recorded.position_spec.groups(
        recorded.share_weights
    )
    before = recorded.interventions if same_layout else [None] * count
    sites = [_site_config(e, b, options) for e, b in zip(chunks[0], before, strict=True)]
    if options.dropout is None and not same_layout:
        notes.append(
            "pyreft does not record dropout: assumed 0 (it only matters for further training); "
            "pass --dropout to set it"
        )
    if options.act_fn is None and not same_layout and any(s.type in ACTIVATED for s in sites):
        notes.append(
            "pyreft does not record the activation: assumed none (identity, pyreft's default); "
            "pass --act-fn if the adapter was trained with one"
        )
    same_base = recorded is not None and recorded.base_model == base_model
    return ReftConfig(
        interventions=sites,
        positions=str(spec),
        share_weights=share,
        base_model=base_model,
        base_model_revision=recorded.base_model_revision if same_base else None,
        task_type=task_type,
        dtype=recorded.dtype if recorded else "float32",
        prompt_template=recorded.prompt_template if recorded else None,
        tokenizer=dict(recorded.tokenizer) if recorded else {},
    )


def _share_weights(
    option: bool | None,
    recorded: ReftConfig | None,
    entries: list[_Entry],
    spec: PositionSpec,
    notes: list[str],
) -> bool:
    if option is not None:
        return option
    if recorded is not None:
        return recorded.share_weights
    half = len(entries) // 2
    signatures = [e.signature for e in entries]
    paired = len(entries) % 2 == 0 and signatures[:half] == signatures[half:]
    untied = paired and spec.first > 0 and spec.last > 0
    notes.append(
        "share_weights inferred from the layout: "
        + (
            "untied (each site has a prefix and a suffix intervention)"
            if untied
            else "tied (one intervention per site)"
        )
        + "; pass --share-weights or --no-share-weights to override"
    )
    return not untied


def _untied_mismatch(count: int) -> str:
    return (
        f"untied weights need two interventions per site (pyreft's layout: every prefix one, then "
        f"every suffix one, at the same sites), but the {count} interventions do not pair up; "
        "pass --share-weights, or --positions with one side only"
    )


def _site_config(
    entry: _Entry, before: InterventionConfig | None, options: ImportOptions
) -> InterventionConfig:
    """A site's settings: the options, else what reft's own config recorded, else pyreft's defaults."""
    dropout = options.dropout if options.dropout is not None else before.dropout if before else 0.0
    act_fn = options.act_fn or (before.act_fn if before else None)
    site = entry.site
    return InterventionConfig(
        layer=site.layer,
        type=site.type,
        component=site.component,
        rank=site.rank,
        dropout=dropout,
        act_fn=act_fn,
        add_bias=entry.add_bias,
    )


# ----------------------------------------------------------------- weights
def _native_state(
    entries: list[_Entry], groups: tuple[str, ...], sites: int
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The adapter's intervention tensors (pyreft's k-th is site k mod n, group k div n), and the
    pyreft file each came from."""
    state, files = {}, {}
    for k, entry in enumerate(entries):
        prefix = f"{INTERVENTION_PREFIX}{k % sites}.{groups[k // sites]}."
        for name, value in entry.state.items():
            state[prefix + name] = value
            files[prefix + name] = f"{entry.file}: {pyreft_name(entry.site.type, name)}"
    return state, files


def _with_head(
    model: ReftModel, state: dict[str, Tensor], head: dict[str, Tensor], notes: list[str]
) -> dict[str, Tensor]:
    """The state plus the classification head: pyreft's trained one, else the base model's own."""
    if head and not model.head_names:
        raise ReftError(
            f"{HEAD_FILE} holds trained model parameters ({', '.join(sorted(head)[:3])}), but a "
            "causal_lm adapter has no head; pass --task-type seq_cls"
        )
    if not model.head_names:
        return state
    if not head:
        notes.append(
            f"no {HEAD_FILE}: the classification head is the base model's own (pyreft saves a "
            "trained head only with include_model=True)"
        )
        from reft_cli.engine.base_models import load_model

        config = model.reft_config
        base = load_model(config.base_model, "seq_cls", config.dtype, config.base_model_revision)
        head = {name: base.get_parameter(name).detach() for name in model.head_names}
    missing = sorted(set(model.head_names) - set(head))
    unexpected = sorted(set(head) - set(model.head_names))
    if missing or unexpected:
        raise ReftError(
            f"{HEAD_FILE} does not hold this base model's classification head (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}); check --base-model"
        )
    return {**state, **{HEAD_PREFIX + name: value for name, value in head.items()}}


def _check_hidden_size(folder: Path, entries: list[_Entry], base, name: str) -> None:
    from reft_cli.engine.architecture import Architecture

    hidden = Architecture.of(base).hidden_size
    for entry in entries:
        wrong = sorted(entry.hidden_sizes - {hidden})
        if wrong:
            raise ReftError(
                f"{folder / entry.file} was trained on a model with hidden size {wrong[0]}, but "
                f"{name} has hidden size {hidden}; import it onto the base model it was trained on"
            )


def _prefer_reft_weights(
    state: dict[str, Tensor], side: dict[str, Tensor], notes: list[str]
) -> dict[str, Tensor]:
    """reft's own weights when they are what the pyreft files were exported from: bit-exact R."""
    if set(state) != set(side):
        notes.append(f"the options change the layout of {CONFIG_NAME}: used the pyreft files")
        return state
    if not _agrees(state, side):
        notes.append(
            f"{WEIGHTS_NAME} beside the pyreft files does not match them (re-saved by pyreft?); "
            "used the pyreft files"
        )
        return state
    notes.append(f"weights taken bit for bit from {WEIGHTS_NAME} (they match the pyreft files)")
    return side


def _agrees(state: dict[str, Tensor], side: dict[str, Tensor]) -> bool:
    """Whether reft's own weights are what the pyreft files were exported from."""
    for key, value in state.items():
        mine = side[key]
        if value.shape != mine.shape:
            return False
        if key.endswith("rotation.weight"):
            if not torch.allclose(value, orthonormal_rows(mine), atol=1e-5, rtol=0):
                return False
        elif not torch.equal(value.to(mine.dtype), mine):
            return False
    return True


def _check_shapes(model: ReftModel, state: dict[str, Tensor], files: dict[str, str]) -> None:
    """Every tensor has the shape the base model needs, and none is missing or extra."""
    check_tensors(
        state,
        {name: tuple(target.shape) for name, target in model.trainable_state().items()},
        source="the imported weights",
        described_by="the layout built from the pyreft files",  # built from the same entries
        advice="this is a bug in `reft import`; please report it",
        shape_advice="import it onto the base model it was trained on",
        labels=files,
    )
