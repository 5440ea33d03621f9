"""`reft reproduce`: train and evaluate every run of a recipe, then report against its targets.

Each (run, seed) lives in `<output_dir>/<run>/seed<seed>/`: `adapter/` (the training run),
`train.json` (written when training finished), `eval/` (`reft eval`'s output) and `run.json` (the
resolved config it was started with). Whatever is finished is kept, an interrupted training run
resumes from its last checkpoint, so running the command again picks up where it stopped. A folder
started with a different config is never reused: the command stops and says so.

    outcome = reproduce(load_recipe(Path("recipes/offline-glue.yaml")), console)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from reft_cli.config.schema import RunConfig
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import (
    ADAPTER_DIR,
    EVAL_DIR,
    RECIPE_RECORD_NAME,
    REPORT_MARKDOWN_NAME,
    RESULTS_NAME,
    RUN_RECORD_NAME,
    TRAIN_DONE_NAME,
)
from reft_cli.errors import ReftError
from reft_cli.reproduce.recipes import Recipe, RecipeRun
from reft_cli.reproduce.report import RecipeReport, build_report, write_report
from reft_cli.training.run_dir import checkpoints, holds_a_run

__all__ = ["Job", "jobs", "reproduce"]

# Settings that say how a run is executed, not what it computes; they may change between attempts.
_EXECUTION_KEYS = ("output_dir", "overwrite_output_dir", "resume_from_checkpoint")


@dataclass(frozen=True)
class Job:
    """One seed of one run and where its files go."""

    run: RecipeRun
    seed: int
    folder: Path

    @property
    def adapter(self) -> Path:
        return self.folder / ADAPTER_DIR

    def status(self) -> str:
        if (self.folder / EVAL_DIR / RESULTS_NAME).is_file():
            return "done"
        if not self.run.train or (self.folder / TRAIN_DONE_NAME).is_file():
            return "evaluate"
        return "resume" if checkpoints(self.adapter) else "train"


def jobs(recipe: Recipe, only: list[str] | None = None) -> list[Job]:
    """Every (run, seed) of the recipe, or of the runs named in `only`."""
    names = {run.name for run in recipe.runs}
    unknown = [name for name in only or [] if name not in names]
    if unknown:
        raise ReftError(
            f"--only {', '.join(unknown)}: no such run in {recipe.path}; "
            f"the runs are {', '.join(sorted(names))}"
        )
    return [
        Job(run, seed, recipe.output_dir / run.name / f"seed{seed}")
        for run in recipe.runs
        if not only or run.name in only
        for seed in run.seeds
    ]


def reproduce(
    recipe: Recipe,
    console: Console,
    only: list[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> RecipeReport | None:
    """Run what is not finished, then write report.md/report.json/report.png; None on a dry run."""
    todo = jobs(recipe, only)
    if recipe.requires_gpu and not torch.cuda.is_available() and not force and not dry_run:
        raise ReftError(
            f"recipe {recipe.name} needs a GPU and none is visible; run it on a GPU machine, "
            "or pass --force to run it here anyway"
        )
    _claim(recipe, dry_run)
    console.print(_plan_table(recipe, todo))
    if dry_run:
        return None
    for job in todo:
        _run(recipe, job, console)
    report = build_report(recipe)
    write_report(recipe, report)
    console.print(report.table())
    console.print(f"report: {recipe.output_dir / REPORT_MARKDOWN_NAME}")
    return report


def _claim(recipe: Recipe, dry_run: bool) -> None:
    """Mark the output folder as this recipe's; refuse one that holds another recipe's runs."""
    record = recipe.output_dir / RECIPE_RECORD_NAME
    if record.is_file():
        owner = json.loads(record.read_text()).get("name")
        if owner != recipe.name:
            raise ReftError(
                f"{recipe.output_dir} holds the runs of recipe {owner!r}, not {recipe.name!r}; "
                "set output_dir in the recipe to another folder"
            )
    elif not dry_run:
        atomic_write_text(
            record, json.dumps({"name": recipe.name, "recipe": str(recipe.path)}) + "\n"
        )


def _plan_table(recipe: Recipe, todo: list[Job]) -> Table:
    table = Table(title=f"reft reproduce — {recipe.name}")
    for column in ("run", "seed", "config", "overrides", "status"):
        table.add_column(column)
    for job in todo:
        overrides = " ".join(job.run.overrides) or "—"
        config = str(recipe.configs[job.run.name])
        table.add_row(job.run.title(), str(job.seed), config, overrides, job.status())
    return table


def _run(recipe: Recipe, job: Job, console: Console) -> None:
    status = job.status()
    if status == "done":
        return
    _check_record(recipe, job)
    if status in ("train", "resume"):
        _train(recipe, job, console, resume=status == "resume")
    _evaluate(recipe, job, console)


def _resolved(recipe: Recipe, job: Job) -> dict[str, Any]:
    config = recipe.run_config(job.run, job.seed, []).to_dict()
    for key in _EXECUTION_KEYS:
        config["train"].pop(key, None)
    return config


def _check_record(recipe: Recipe, job: Job) -> None:
    """Write what the job runs with; stop if its folder was started with something else."""
    config = _resolved(recipe, job)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    record = job.folder / RUN_RECORD_NAME
    if record.is_file():
        recorded = json.loads(record.read_text())
        if recorded.get("config_sha256") != digest and not _same_run(
            recorded.get("config", {}), config, RunConfig().to_dict()
        ):
            raise ReftError(
                f"{job.folder} was started with a different config for run {job.run.name} "
                f"seed {job.seed}; delete that folder to start it again with the new settings"
            )
        return
    text = json.dumps({"config_sha256": digest, "seed": job.seed, "config": config}, indent=2)
    atomic_write_text(record, text + "\n")


def _same_run(recorded: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a recorded config is the current one, but for settings reft gained since it was
    written that hold their defaults (an upgrade must not orphan finished runs)."""
    if set(recorded) - set(current):
        return False
    for key, value in current.items():
        default = defaults.get(key)
        if key not in recorded:
            if value != default:
                return False
        elif isinstance(value, dict) and isinstance(recorded[key], dict):
            if not _same_run(recorded[key], value, default if isinstance(default, dict) else {}):
                return False
        elif recorded[key] != value:
            return False
    return True


def _train(recipe: Recipe, job: Job, console: Console, resume: bool) -> None:
    from reft_cli.training.trainer import Trainer

    extra = [f"train.output_dir={job.adapter}"]
    if resume:
        extra.append("train.resume_from_checkpoint=latest")
    elif holds_a_run(job.adapter):  # this job's own attempt, stopped before its first checkpoint
        extra.append("train.overwrite_output_dir=true")
    console.rule(f"train {job.run.title()} — seed {job.seed}")
    summary = Trainer(recipe.run_config(job.run, job.seed, extra), console).train()
    done = {
        "seconds": round(summary.seconds, 2),
        "steps": summary.steps,
        "epochs": summary.epochs,
        "final_loss": summary.final_loss,
        "trainable_parameters": summary.trainable_parameters,
        "head_parameters": summary.head_parameters,
        "model_parameters": summary.model_parameters,
        "resumed": resume,
    }
    atomic_write_text(job.folder / TRAIN_DONE_NAME, json.dumps(done, indent=2) + "\n")


def _evaluate(recipe: Recipe, job: Job, console: Console) -> None:
    from reft_cli.evaluation.evaluate import EvalOptions, run_eval

    console.rule(f"evaluate {job.run.title()} — seed {job.seed}")
    output = job.folder / EVAL_DIR
    if job.run.harness:
        _evaluate_harness(recipe, job, output, console)
        return
    if job.run.train:
        options = EvalOptions(adapter=job.adapter, output=output, overwrite=True)
    else:
        options = EvalOptions(
            config=recipe.configs[job.run.name],
            overrides=list(job.run.overrides),
            no_adapter=True,
            output=output,
            overwrite=True,  # this job's own folder, without results (they would have been kept)
        )
    run_eval(options, console)


def _evaluate_harness(recipe: Recipe, job: Job, output: Path, console: Console) -> None:
    """The run's harness tasks, scored by lm-eval; results land where `reft eval` puts its own."""
    from reft_cli.evaluation.harness.run import HarnessOptions, run_harness

    trained = {"adapter": job.adapter} if job.run.train else {}
    base = {} if job.run.train else {"config": recipe.configs[job.run.name], "no_adapter": True}
    options = HarnessOptions(
        tasks=list(job.run.harness),
        overrides=list(job.run.overrides),
        limit=job.run.harness_limit,
        output=output,
        overwrite=True,  # this job's own folder, without results (they would have been kept)
        **trained,
        **base,
    )
    run_harness(options, console)
