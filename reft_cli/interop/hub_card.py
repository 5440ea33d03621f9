"""The model card (`README.md`) of a hub export: metadata front matter and what a reader needs.

Front matter: base_model (a hub id, when the base model has one), library_name, license (from the
base model's card or config when known, or `--license`), pipeline_tag, tags. Body: the intervention
setup, parameter count and share of the base model, training settings from training_config.yaml,
eval results from eval_results.json, and usage from the command line and from Python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reft_cli.engine.folder_names import (
    CARD_NAME,
    CONFIG_NAME,
    EVAL_DIR,
    LOG_NAME,
    PLOT_NAME,
    RESULTS_NAME,
    TRAINING_CONFIG_NAME,
)
from reft_cli.engine.native_adapter import NativeAdapter
from reft_cli.errors import ReftError

# reft's embedded model aliases: their hub ids and licenses.
KNOWN_BASES = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
}
PIPELINE_TAGS = {"causal_lm": "text-generation", "seq_cls": "text-classification"}
TRAINING_KEYS = (
    ("data", "dataset"),
    ("data", "template"),
    ("data", "max_length"),
    ("train", "num_train_epochs"),
    ("train", "max_steps"),
    ("train", "learning_rate"),
    ("train", "per_device_train_batch_size"),
    ("train", "gradient_accumulation_steps"),
    ("train", "lr_scheduler_type"),
    ("train", "warmup_ratio"),
    ("train", "weight_decay"),
    ("train", "max_grad_norm"),
    ("train", "bf16"),
    ("train", "seed"),
)
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass
class Card:
    text: str
    notes: list[str] = field(default_factory=list)


def render_card(
    native: NativeAdapter, repo_id: str | None = None, license: str | None = None
) -> Card:
    config = native.config
    notes: list[str] = []
    base = config.base_model or "unknown"
    hub_id = base_hub_id(base)
    license = license or base_license(base, config.base_model_revision)
    if license is None:
        notes.append("the base model's license is unknown: pass --license to set it in the card")
    if hub_id is None:
        notes.append(
            f"the base model {base} is not a hub model: users of this folder need it too (set "
            f"base_model in {CONFIG_NAME} to a hub id before publishing)"
        )
    total = base_parameter_count(native)
    if total is None:
        notes.append(f"could not load the config of {base}: the card omits the share of the model")
    types = list(dict.fromkeys(site.type for site in config.interventions))
    front: dict[str, Any] = {}
    if hub_id:
        front["base_model"] = hub_id
    front["library_name"] = "reft"
    if license:
        front["license"] = license
    front["pipeline_tag"] = PIPELINE_TAGS.get(config.task_type, "text-generation")
    front["tags"] = ["reft", "representation-finetuning", *types]
    sections = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# ReFT adapter for `{base}`",
        f"A {'/'.join(types)} adapter trained with reft (Representation Finetuning): the base model "
        "stays frozen and small learned interventions edit its hidden states at chosen layers and "
        "prompt positions.",
        _interventions(native),
        _parameters(native, total),
        _training(native.folder),
        _evaluation(native.folder),
        _usage(native, repo_id),
    ]
    return Card("\n\n".join(s for s in sections if s) + "\n", notes)


# ----------------------------------------------------------------- sections
def _interventions(native: NativeAdapter) -> str:
    config = native.config
    rows = [
        f"| {s.layer} | {s.component} | {s.type} | {s.rank} | {s.dropout:g} | {s.act_fn or 'identity'} |"
        for s in config.interventions
    ]
    weights = "tied: one intervention per layer" if config.share_weights else "untied"
    if not config.share_weights:
        weights += f" (separate {' and '.join(native.groups)} interventions per layer)"
    lines = [
        "## Interventions",
        "",
        "| layer | component | type | rank | dropout | activation |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"- positions: `{config.positions}` of the prompt ({weights})",
        f"- task: {config.task_type}, base model dtype {config.dtype}, "
        f"hidden size {native.hidden_size}",
    ]
    if config.prompt_template is not None:
        lines.append(f"- prompt template: `{config.prompt_template!r}`")
    return "\n".join(lines)


def _parameters(native: NativeAdapter, total: int | None) -> str:
    count = native.intervention_parameters()
    share = (
        f" ({100 * count / total:.4f}% of the {total:,} parameters of the model)" if total else ""
    )
    lines = ["## Parameters", "", f"- trainable intervention parameters: {count:,}{share}"]
    if native.head:
        lines.append(
            f"- classification head (trained, counted apart): {native.head_parameters():,}"
        )
    return "\n".join(lines)


def _training(folder: Path) -> str:
    path = folder / TRAINING_CONFIG_NAME
    if not path.is_file():
        return ""
    try:
        run = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return ""
    rows = []
    for section, key in TRAINING_KEYS:
        value = (run.get(section) or {}).get(key) if isinstance(run, dict) else None
        if value is not None and value != -1:
            rows.append(f"| {section}.{key} | `{value}` |")
    steps, loss = _last_log(folder / LOG_NAME)
    curve = [f"![loss curve]({PLOT_NAME})", ""] if (folder / PLOT_NAME).is_file() else []
    if steps is not None:
        rows.append(f"| optimizer steps | {steps} |")
    if loss is not None:
        rows.append(f"| final training loss | {loss:.4f} |")
    return "\n".join(
        [
            "## Training",
            "",
            "| setting | value |",
            "|---|---|",
            *rows,
            "",
            *curve,
            f"The full resolved config is in `{TRAINING_CONFIG_NAME}`.",
        ]
    )


def _evaluation(folder: Path) -> str:
    path = eval_results_path(folder)
    if path is None:
        return ""
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if not isinstance(report, dict):
        return ""
    lines = ["## Evaluation", ""]
    tasks = report.get("tasks")
    if isinstance(tasks, dict) and tasks:
        lines += ["| task | metric | score | examples |", "|---|---|---|---|"]
        for name, task in tasks.items():
            task = task if isinstance(task, dict) else {"score": task}
            lines.append(
                f"| {name} | {task.get('metric', '')} | {_number(task.get('score'))} | "
                f"{task.get('num_examples', '')} |"
            )
        if isinstance(report.get("average"), (int, float)):
            lines.append(f"| **average** | | {_number(report['average'])} | |")
        details = [f"{k} {report[k]}" for k in ("split", "limit") if report.get(k) is not None]
        if details:
            lines += ["", f"Evaluated with reft eval ({', '.join(details)})."]
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {_number(v)} |" for k, v in report.items() if isinstance(v, (int, float, str))
        ]
    return "\n".join(lines)


def _usage(native: NativeAdapter, repo_id: str | None) -> str:
    repo = repo_id or "YOUR_NAME/ADAPTER_REPO"
    if native.config.task_type == "seq_cls":
        python_run = [
            'inputs = tokenizer(["A sentence to classify."], return_tensors="pt")',
            "lengths = inputs['attention_mask'].sum(dim=1)",
            "logits = model(**inputs, prompt_lengths=lengths).logits",
            "print(logits.argmax(dim=-1))",
        ]
        cli = "reft eval --adapter adapter --tasks YOUR_TASK"
    else:
        python_run = [
            'inputs = tokenizer(["Who are you?"], return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=64)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ]
        cli = 'reft generate --adapter adapter --prompt "Who are you?"'
    template = (
        "reft applies the adapter's prompt template itself; in Python, format prompts the same way."
        if native.config.prompt_template not in (None, "{prompt}")
        else ""
    )
    lines = [
        "## Usage",
        "",
        "From the command line (with reft installed):",
        "",
        "```bash",
        f"hf download {repo} --local-dir adapter",
        cli,
        "```",
        "",
        "From Python:",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "from reft_cli import ReftModel",
        "from reft_cli.engine.base_models import load_tokenizer",
        "",
        f'folder = snapshot_download("{repo}")',
        "model = ReftModel.from_pretrained(folder).eval()  # loads the base model it names",
        "tokenizer = load_tokenizer(model.reft_config.base_model)",
        *python_run,
        "```",
    ]
    if template:
        lines += ["", template]
    lines += [
        "",
        "`reft export --format pyreft` writes the same adapter in pyreft's layout.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------- facts about the base model
def base_hub_id(name: str) -> str | None:
    """The base model's hub id: a known alias's, or the name itself when it is not a local folder."""
    if name in KNOWN_BASES:
        return KNOWN_BASES[name][0]
    if _HUB_ID.fullmatch(name) and not Path(name).expanduser().exists():
        return name
    return None


def base_license(name: str, revision: str | None = None) -> str | None:
    """The license in the base model's card or config: a local folder, or the hub cache (offline)."""
    if name in KNOWN_BASES:
        return KNOWN_BASES[name][1]
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _card_license(folder / CARD_NAME) or _config_license(folder / "config.json")
    if _HUB_ID.fullmatch(name):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, CARD_NAME, revision=revision)
        if isinstance(cached, str):
            return _card_license(Path(cached))
    return None


def base_parameter_count(native: NativeAdapter) -> int | None:
    """Parameters of the base model (with the adapter's head), counted on the meta device."""
    config = native.config
    if not config.base_model:
        return None
    from reft_cli.engine.skeleton import model_skeleton

    try:
        model = model_skeleton(config.base_model, config.task_type, config.base_model_revision)
    except ReftError:
        return None
    total = sum(p.numel() for p in model.parameters())
    if native.head:
        prefix = getattr(model, "base_model_prefix", "") + "."
        own_head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(prefix))
        total += native.head_parameters() - own_head
    return total


def eval_results_path(folder: Path) -> Path | None:
    """`eval_results.json` in the adapter folder, or in `eval/` where `reft eval` writes it."""
    for path in (folder / RESULTS_NAME, folder / EVAL_DIR / RESULTS_NAME):
        if path.is_file():
            return path
    return None


def _card_license(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if match is None:
        return None
    try:
        meta = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def _config_license(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text()).get("license")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _last_log(path: Path) -> tuple[int | None, float | None]:
    """The last optimizer step and training loss in trainer_log.jsonl."""
    if not path.is_file():
        return None, None
    steps, loss = None, None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            steps = entry.get("step", steps)
            loss = entry.get("loss", loss)
    return steps, loss if isinstance(loss, (int, float)) else None


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
