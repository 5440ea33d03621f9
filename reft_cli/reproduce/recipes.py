"""Recipes: reproduction jobs as YAML. A recipe lists runs (a config, overrides, seeds), each
trained then evaluated, and the numbers they must reach.

    name: offline-glue
    description: MiniLM on SST-2, LoReFT beside LoRA and a head-only probe.
    runs:
      - name: loreft
        config: configs/glue-mini.yaml
        seeds: [42, 43, 44]
      - name: untrained
        config: configs/glue-mini.yaml
        train: false                 # evaluate the base model only: a baseline
      - name: harness
        config: configs/glue-mini.yaml
        harness: [piqa, arc_easy]    # scored by lm-evaluation-harness instead (reft[harness])
        harness_limit: 100           # rows per task
    expect:
      - {run: loreft, task: sst2, value: 75.0, tolerance: 3.0, source: measured here}
      - {run: loreft, task: sst2, above: untrained}

Expected values and tolerances are in points (percent), as the paper and `reft eval` print them.
Validation reuses config_validation, so a recipe's mistakes are reported like a config's: all of
them at once, each with its key path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reft_cli.config.reader import load_config, read_yaml
from reft_cli.config.schema import ConfigError, RunConfig
from reft_cli.config.shipped import find_config
from reft_cli.config.validation import NON_NEGATIVE, build, option, rule

__all__ = ["AVERAGE", "Expectation", "Recipe", "RecipeRun", "load_recipe"]

AVERAGE = "average"
"""The task name that stands for the mean of a run's task scores."""

_NAME = rule(
    lambda v: bool(v) and v.replace("-", "_").isidentifier(), "a name of letters, digits, - and _"
)


@dataclass(frozen=True)
class RecipeRun:
    """One line of the recipe: a config trained (or not) once per seed, then evaluated."""

    name: str = option("", _NAME)
    config: str = option("")  # a config path (relative to the recipe or the cwd) or a shipped name
    overrides: list[str] = option([])  # noqa: RUF009 - option() returns a field
    seeds: list[int] = option([42], rule(lambda v: bool(v), "a non-empty list of seeds"))  # noqa: RUF009
    train: bool = option(True)  # false: evaluate the base model as the config describes it
    label: str | None = option(None)  # how the report names the run; default its name
    # lm-evaluation-harness tasks that score the run instead of the config's eval section
    harness: list[str] = option([])  # noqa: RUF009 - option() returns a field
    harness_limit: int | None = option(None, rule(lambda v: v > 0, "a positive number of rows"))

    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Expectation:
    """A number a run must reach: `value` within `tolerance` points, and/or above another run."""

    run: str = option("")
    runs: list[str] = option([])  # noqa: RUF009 - instead of run: the mean over these runs
    task: str = option("")  # a task name from the run's eval results, or "average"
    metric: str | None = option(None)  # default: the task's headline metric
    value: float | None = option(None)  # in points (percent)
    tolerance: float = option(0.0, NON_NEGATIVE)
    above: str | None = option(None)  # another run whose mean this run's mean must exceed
    lower_is_better: bool = option(False)
    source: str = option("")  # where the expected value comes from

    def describe(self) -> str:
        metric = f" {self.metric}" if self.metric else ""
        who = self.run or f"mean of {', '.join(self.runs)}"
        return f"{who} {self.task}{metric}"

    def subjects(self) -> list[str]:
        """The runs whose means are averaged into the measured value."""
        return [self.run] if self.run else list(self.runs)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    requires_gpu: bool
    output_dir: Path
    runs: list[RecipeRun]
    expect: list[Expectation]
    path: Path
    configs: dict[str, Path] = field(default_factory=dict)  # run name -> resolved config file

    def run(self, name: str) -> RecipeRun:
        return next(r for r in self.runs if r.name == name)

    def run_config(self, run: RecipeRun, seed: int, extra: list[str]) -> RunConfig:
        """The run's config for one seed, with the recipe's and the caller's overrides."""
        return load_config(self.configs[run.name], [*run.overrides, f"train.seed={seed}", *extra])


@dataclass(frozen=True)
class _Top:
    """The recipe file's top level, validated like a config section."""

    name: str = option("", _NAME)
    description: str = option("")
    requires_gpu: bool = option(False)
    output_dir: str | None = option(None)  # default out/reproduce/<name>


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe: its fields, its run names, and every run's config and overrides."""
    data = read_yaml(path, f"recipe {path} not found; the shipped recipes are in recipes/")
    problems: list[str] = []
    data = dict(data) if isinstance(data, dict) else data
    runs = _entries(
        RecipeRun, data.pop("runs", []) if isinstance(data, dict) else [], "runs", problems
    )
    expect = _entries(
        Expectation, data.pop("expect", []) if isinstance(data, dict) else [], "expect", problems
    )
    top = build(_Top, data if data is not None else {}, "", problems)
    if not top.name:
        problems.append("name: missing; give the recipe a name (it names the output folder)")
    if not runs:
        problems.append("runs: missing; list at least one run with a name and a config")
    problems += _check_runs(runs, path)
    problems += _check_expectations(expect, {r.name for r in runs})
    if problems:
        raise ConfigError(problems, str(path))
    configs = {run.name: _config_file(run.config, path) for run in runs}
    recipe = Recipe(
        name=top.name,
        description=top.description,
        requires_gpu=top.requires_gpu,
        output_dir=Path(top.output_dir or f"out/reproduce/{top.name}"),
        runs=runs,
        expect=expect,
        path=path,
        configs=configs,  # type: ignore[arg-type] - _check_runs reported any that is None
    )
    for run in runs:  # every config and override must load before hours of training start
        try:
            recipe.run_config(run, run.seeds[0], [])
        except ConfigError as err:
            raise ConfigError(err.problems, f"{path} run {run.name} ({err.source})") from None
    return recipe


def _entries(cls: type, items: Any, key: str, problems: list[str]) -> list[Any]:
    """A list of mappings, each validated as `cls` (the generic validator checks one mapping)."""
    if not isinstance(items, list):
        problems.append(f"{key}: expected a list of mappings")
        return []
    return [build(cls, item, f"{key}[{i}]", problems) for i, item in enumerate(items)]


def _config_file(config: str, recipe: Path) -> Path | None:
    """A config path as written, relative to the recipe's folder, or a shipped config (with or
    without the `configs/` prefix, so recipes run from any folder)."""
    for candidate in (Path(config), recipe.parent / config):
        if candidate.is_file():
            return Path(os.path.normpath(candidate))
    return find_config(config.removeprefix("configs/"))


def _check_runs(runs: list[RecipeRun], path: Path) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not run.name:
            problems.append(f"{where}.name: missing; every run needs a name")
        elif run.name in seen:
            problems.append(f"{where}.name: {run.name!r} is used twice; run names must differ")
        seen.add(run.name)
        if not run.config:
            problems.append(f"{where}.config: missing; name a config file or a shipped config")
        elif _config_file(run.config, path) is None:
            problems.append(
                f"{where}.config: {run.config!r} not found (as a path, beside the recipe, "
                "or as a shipped config); see `reft configs list`"
            )
        if run.harness_limit is not None and not run.harness:
            problems.append(f"{where}.harness_limit: goes with harness: [tasks]")
        if not run.train and len(run.seeds) > 1:
            problems.append(
                f"{where}.seeds: an evaluation-only run (train: false) is deterministic; "
                "give it one seed or none"
            )
    return problems


def _check_expectations(expect: list[Expectation], names: set[str]) -> list[str]:
    problems: list[str] = []
    for i, item in enumerate(expect):
        where = f"expect[{i}]"
        if bool(item.run) == bool(item.runs):
            problems.append(f"{where}: name either one run (run) or several to average (runs)")
        named = [("run", item.run), ("above", item.above)] + [("runs", r) for r in item.runs]
        for key, name in named:
            if name and name not in names:
                choices = ", ".join(sorted(names))
                problems.append(f"{where}.{key}: no run named {name!r}; the runs are {choices}")
        if not item.task:
            problems.append(f"{where}.task: missing; name a task or 'average'")
        if item.value is None and item.above is None:
            problems.append(f"{where}: give a value (with a tolerance) or a run to be above")
    return problems
