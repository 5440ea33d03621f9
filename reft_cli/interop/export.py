"""`reft export`: an adapter in pyreft's folder layout, or as a folder ready for the model hub.

Both read the adapter from its files alone (no base model for `pyreft`), write the new folder beside
OUT and rename it into place, and never touch an existing OUT. `--push-to-hub` checks that it can
push before writing anything, then uploads the finished folder with huggingface_hub.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from reft_cli.engine.folder_names import (
    CARD_NAME,
    CONFIG_NAME,
    LOG_NAME,
    PLOT_NAME,
    RESULTS_NAME,
    TRAINING_CONFIG_NAME,
    WEIGHTS_NAME,
)
from reft_cli.engine.lora_config import is_lora_adapter
from reft_cli.engine.native_adapter import NativeAdapter
from reft_cli.engine.staged_dir import refuse_existing, staged_dir
from reft_cli.errors import ReftError, check_choice, first_line
from reft_cli.interop.hub_card import eval_results_path, render_card
from reft_cli.interop.pyreft_format import (
    CONFIG_FILE,
    HEAD_FILE,
    PYREFT_CLASSES,
    Site,
    config_json,
    intervention_keys,
    state_file_name,
    to_pyreft_state,
    write_state_file,
)

FORMATS = ("pyreft", "hub")
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, TRAINING_CONFIG_NAME, LOG_NAME, PLOT_NAME)


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    notes: list[str] = field(default_factory=list)
    pushed_to: str | None = None

    def lines(self) -> list[str]:
        lines = [f"wrote {self.out} ({', '.join(self.files)})"]
        lines += [f"note: {note}" for note in self.notes]
        if self.pushed_to:
            lines.append(f"pushed to https://huggingface.co/{self.pushed_to}")
        return lines


def export_adapter(
    adapter: Path,
    format: str,
    out: Path,
    push_to_hub: str | None = None,
    license: str | None = None,
) -> ExportResult:
    """Write ADAPTER as `format` into OUT, then push OUT to the hub when asked."""
    check_choice("export format", format, FORMATS)
    if is_lora_adapter(adapter):
        raise ReftError(
            f"{adapter} is a LoRA adapter; export writes ReFT adapters only, and this folder is "
            "already in PEFT's format (load it with peft.PeftModel.from_pretrained)"
        )
    native = NativeAdapter.read(adapter)
    out = Path(out)
    refuse_existing(out)
    if push_to_hub:
        check_can_push(push_to_hub)
    if format == "pyreft" and native.config.pooling != "first":
        raise ReftError(
            f"{adapter}'s head reads the {native.config.pooling} of the last states "
            "(model.pooling), which pyreft cannot express; export it with --format hub"
        )
    if format == "pyreft":
        result = write_pyreft(native, out)
    else:
        result = write_hub(native, out, push_to_hub, license)
    if push_to_hub:
        push_folder(out, push_to_hub)
        result.pushed_to = push_to_hub
    return result


# ----------------------------------------------------------------- pyreft
def write_pyreft(native: NativeAdapter, out: Path) -> ExportResult:
    """pyreft's config.json and intkey_*.bin files, plus reft's own two files for exact re-import.

    Untied adapters follow pyreft's order: every site's prefix intervention first, then every site's
    suffix intervention (pyreft gives the first half of its interventions the prefix positions).
    """
    hidden = native.hidden_size
    sites, states = [], []
    for group in native.groups:
        for index, site in enumerate(native.config.interventions):
            sites.append(Site(site.layer, site.component, site.type, site.rank))
            state = native.intervention_state(index, group)
            states.append(to_pyreft_state(site.type, state, hidden))
    with staged_dir(out) as tmp:
        (tmp / CONFIG_FILE).write_text(config_json(sites, hidden))
        for key, state in zip(intervention_keys(sites), states, strict=True):
            write_state_file(tmp / state_file_name(key), state)
        if native.head:
            write_state_file(tmp / HEAD_FILE, native.head)
        for name in (CONFIG_NAME, WEIGHTS_NAME):  # pyreft ignores them; `reft import` reads them
            shutil.copyfile(native.folder / name, tmp / name)
        files = sorted(p.name for p in tmp.iterdir())
    return ExportResult(out, files, pyreft_notes(native, len(sites)))


def pyreft_notes(native: NativeAdapter, count: int) -> list[str]:
    """What a pyreft user must know that pyreft's files cannot say."""
    config = native.config
    notes = [f"pyreft does not record positions: apply the interventions at {config.positions}"]
    if len(native.groups) == 2:
        notes[0] += (
            f" with untied weights: the first {count // 2} interventions in config.json take "
            f"the prefix positions, the last {count // 2} the suffix (pyreft's order)"
        )
    types = {site.type for site in config.interventions}
    if types & {"loreft", "orth_direft", "noreft", "direft"}:
        notes.append(
            "pyreft.ReftModel.load builds W and b in bfloat16 (its default): on a float32 model, "
            "cast the loaded interventions to float32 and load_state_dict their intkey_*.bin again"
        )
    if types & {"noreft", "direft"}:
        classes = "/".join(PYREFT_CLASSES[t] for t in sorted(types & {"noreft", "direft"}))
        notes.append(
            f"pyreft 0.1.0's ReftModel.load cannot rebuild {classes} (its loader does not pass "
            "add_bias: KeyError); build them with pyreft.get_reft_model and load_state_dict each "
            "intkey_*.bin"
        )
    extras = sorted(
        {f"act_fn={s.act_fn}" for s in config.interventions if s.act_fn}
        | {f"dropout={s.dropout:g}" for s in config.interventions if s.dropout}
    )
    if extras:
        notes.append(
            f"pyreft's loader assumes no activation and no dropout; this adapter uses "
            f"{', '.join(extras)}: pass them when building the interventions in pyreft"
        )
    if native.head:
        notes.append(
            f"the classification head is in {HEAD_FILE}: load with "
            "pyreft.ReftModel.load(OUT, model, include_model=True)"
        )
    return notes


# ----------------------------------------------------------------- hub
def write_hub(
    native: NativeAdapter, out: Path, repo_id: str | None, license: str | None
) -> ExportResult:
    """The adapter's own files plus a model card README.md with the hub's metadata front matter."""
    card = render_card(native, repo_id=repo_id, license=license)
    with staged_dir(out) as tmp:
        for name in HUB_FILES:
            if (native.folder / name).is_file():
                shutil.copyfile(native.folder / name, tmp / name)
        results = eval_results_path(native.folder)
        if results is not None:
            shutil.copyfile(results, tmp / RESULTS_NAME)
        (tmp / CARD_NAME).write_text(card.text)
        files = sorted(p.name for p in tmp.iterdir())
    return ExportResult(out, files, card.notes)


def check_can_push(repo_id: str) -> None:
    """Fail before writing anything when a push cannot work: a bad name, offline, no token."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ReftError(f"invalid hub repository {repo_id!r}: {first_line(err)}") from err
    if constants.HF_HUB_OFFLINE:
        raise ReftError(
            "cannot push to the hub: offline mode is on (HF_HUB_OFFLINE=1); unset it, or export "
            "without --push-to-hub and upload later with `hf upload REPO OUT`"
        )
    if not huggingface_hub.get_token():
        raise ReftError(
            "cannot push to the hub: not logged in; run `hf auth login` or set HF_TOKEN, then retry"
        )


def push_folder(folder: Path, repo_id: str) -> None:
    """Create the model repository if needed and upload the folder as one commit."""
    import huggingface_hub
    from huggingface_hub import errors

    later = f"{folder} is written: upload it later with `hf upload {repo_id} {folder}`"
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload ReFT adapter exported with reft",
        )
    except errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise ReftError(
                f"the hub refused the push to {repo_id} (HTTP {status}): the token is invalid or "
                f"cannot write there; run `hf auth login` with a write token; {later}"
            ) from err
        raise ReftError(f"pushing to {repo_id} failed: {first_line(err)}; {later}") from err
    except (OSError, ValueError, getattr(errors, "HTTPError", OSError)) as err:
        raise ReftError(
            f"cannot reach the hub to push {repo_id} ({first_line(err)}); {later}"
        ) from err
