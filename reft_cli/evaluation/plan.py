"""What `reft eval` will do: the config, the adapter, the tasks and the output folder, resolved.

Settings come from a config (its `eval` section; the adapter is the run's `train.output_dir`) or
from an adapter folder (the `training_config.yaml` that `reft train` wrote beside it, or beside the
run around a checkpoint-<step> folder); command line options override either. An adapter and a
config must agree on the base model, the task type and the prompt template.

    plan = plan_eval(EvalOptions(adapter=Path("out/run"), tasks=["boolq"], limit=50))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reft_cli.config.reader import load_config
from reft_cli.config.schema import SCORINGS, DataConfig, ModelConfig, RunConfig
from reft_cli.config.splits import parse_split_spec
from reft_cli.config.validation import did_you_mean
from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.folder_names import (
    ADAPTER_MARKERS,
    CHECKPOINT_PATTERN,
    EVAL_DIR,
    TRAINING_CONFIG_NAME,
)
from reft_cli.engine.loading import resolve_device
from reft_cli.engine.lora_config import LoraAdapterConfig, load_adapter_config
from reft_cli.errors import ReftError
from reft_cli.evaluation.tasks import TASKS, TaskRef, parse_task_refs

__all__ = ["EvalOptions", "EvalPlan", "plan_eval"]


@dataclass(frozen=True)
class EvalOptions:
    """What the command line asked for; None means "from the config"."""

    config: Path | None = None
    overrides: Sequence[str] = ()
    adapter: Path | None = None
    no_adapter: bool = False
    tasks: Sequence[str] | None = None
    limit: int | None = None
    batch_size: int | None = None
    split: str | None = None
    max_new_tokens: int | None = None
    output: Path | None = None
    scoring: str | None = None  # generate | loglik
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (ignored under model.device_map)
    overwrite: bool = False  # replace a non-empty output folder (as a whole)


@dataclass(frozen=True)
class EvalPlan:
    """Everything resolved: which model, which tasks, how much of each, where results go."""

    run: RunConfig
    config_path: Path | None  # the config file the run settings came from, if any
    adapter: Path | None  # None: the base model alone
    tasks: list[TaskRef]
    split: str
    limit: int | None
    batch_size: int
    max_new_tokens: int | None  # None: each task's paper default
    template: str | None  # None: each task's own prompt format
    output: Path
    scoring: str = "generate"  # loglik: multiple-choice options by log-likelihood
    device: str = "auto"
    record: ReftConfig | LoraAdapterConfig | None = None  # the adapter's, read once


# ---------------------------------------------------------------------------- planning


def plan_eval(options: EvalOptions) -> EvalPlan:
    """Resolve config, adapter and tasks; checks that adapter and config agree."""
    resolve_device(options.device)  # an unusable --device fails before any data loads
    if options.no_adapter and options.adapter is not None and options.config is not None:
        raise ReftError("pass --adapter or --no-adapter, not both, when a config is given")
    given = load_adapter_config(options.adapter) if options.adapter is not None else None
    run, config_path = _run_config(options, given)
    adapter = _adapter_dir(options, run)
    record = None
    if adapter is not None:  # each adapter record is read once, here, and travels in the plan
        record = given if adapter == options.adapter else load_adapter_config(adapter)
    if record is not None and config_path is not None:
        _check_agreement(record, run, adapter, config_path)
    template = _template(record, run, config_path)
    has_config = config_path is not None
    split = options.split or (run.eval.split if has_config else "test")
    parse_split_spec(split)
    if options.output is not None:
        output = options.output
    elif adapter is not None:
        output = adapter / EVAL_DIR
    else:
        output = (options.adapter or Path(run.train.output_dir)) / "eval-base"
    scoring = options.scoring or run.eval.scoring
    tasks = parse_task_refs(list(options.tasks) if options.tasks else run.eval.tasks)
    _check_scoring(scoring, tasks)
    return EvalPlan(
        run=run,
        config_path=config_path,
        adapter=adapter,
        tasks=tasks,
        split=split,
        limit=options.limit if options.limit is not None else run.eval.limit,
        batch_size=options.batch_size or run.eval.batch_size,
        max_new_tokens=options.max_new_tokens or run.eval.max_new_tokens,
        template=template,
        output=output,
        scoring=scoring,
        device=options.device,
        record=record,
    )


def _check_scoring(scoring: str, tasks: Sequence[TaskRef]) -> None:
    """Log-likelihood scoring needs answer options, which only the multiple-choice sets have."""
    if scoring not in SCORINGS:
        raise ReftError(
            f"unknown scoring {scoring!r}{did_you_mean(scoring, SCORINGS)}; use one of "
            f"{', '.join(SCORINGS)}"
        )
    if scoring == "loglik":
        other = [ref.name for ref in tasks if ref.task.options is None]
        if other:
            with_options = [name for name, task in TASKS.items() if task.options is not None]
            raise ReftError(
                f"--scoring loglik scores the multiple-choice sets ({', '.join(with_options)}); "
                f"{', '.join(other)} can only be scored by generation (--scoring generate)"
            )


def _run_config(
    options: EvalOptions, given: ReftConfig | LoraAdapterConfig | None
) -> tuple[RunConfig, Path | None]:
    if options.config is not None:
        return load_config(options.config, list(options.overrides)), options.config
    if options.overrides:
        raise ReftError("key=value overrides need a config file: reft eval CONFIG key=value")
    if options.adapter is None:
        raise ReftError(
            "nothing to evaluate: give a config (reft eval configs/NAME.yaml) or an adapter "
            "(reft eval --adapter DIR)"
        )
    reft = given
    assert reft is not None
    for folder in _config_folders(options.adapter):
        if (folder / TRAINING_CONFIG_NAME).is_file():
            return load_config(folder / TRAINING_CONFIG_NAME), folder / TRAINING_CONFIG_NAME
    model = ModelConfig(name_or_path=reft.base_model or "", task_type=reft.task_type)
    return RunConfig(
        model=model, data=DataConfig(template=reft.prompt_template or "{prompt}")
    ), None


def _config_folders(adapter: Path) -> list[Path]:
    """The adapter folder, then the run folder around a checkpoint-<step> folder."""
    return [adapter, adapter.parent] if CHECKPOINT_PATTERN.fullmatch(adapter.name) else [adapter]


def _adapter_dir(options: EvalOptions, run: RunConfig) -> Path | None:
    if options.no_adapter:
        return None
    if options.adapter is not None:
        return options.adapter
    output = Path(run.train.output_dir)
    return output if any((output / name).is_file() for name in ADAPTER_MARKERS) else None


def _check_agreement(
    reft: ReftConfig | LoraAdapterConfig, run: RunConfig, adapter: Path, source: Path
) -> None:
    problems = []
    if not _same_model(reft.base_model, run.model.name_or_path):
        problems.append(
            f"the adapter's base model is {reft.base_model!r}, the config's "
            f"{run.model.name_or_path!r}"
        )
    if reft.task_type != run.model.task_type:
        problems.append(f"task type {reft.task_type} vs {run.model.task_type}")
    if reft.prompt_template is not None and reft.prompt_template != run.data.template:
        problems.append(
            f"prompt template {reft.prompt_template!r} vs data.template {run.data.template!r}"
        )
    if problems:
        raise ReftError(
            f"adapter {adapter} and config {source} disagree: {'; '.join(problems)}; evaluate "
            "the adapter with the config it was trained with"
        )


def _same_model(a: str | None, b: str) -> bool:
    if a == b:
        return True
    if a is None:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _template(
    record: ReftConfig | LoraAdapterConfig | None, run: RunConfig, config_path: Path | None
) -> str | None:
    if record is not None and record.prompt_template is not None:
        return record.prompt_template
    return run.data.template if config_path is not None else None
