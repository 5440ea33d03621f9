"""`reft sweep`: a hyperparameter search over a config with Optuna, scored on the selection split.

Each trial is the base config with the sampled `key=value` overrides (and its own output folder),
trained by the Trainer; its value is the trainer's selection metric on the config's eval set
(`data.eval_split`, `data.eval_dataset` or the `data.val_size` hold-out), never the reported test
rows, so picking the best trial cannot leak the test into the choice. The study lives in a SQLite
file (default OUT/study.db), which is the sweep's record: running the same command again loads it
and continues the trial count; trials an interrupted run left running are marked failed.
A trial whose config is invalid or whose training fails (a ReftError, a non-finite loss) is
recorded as failed and the sweep goes on. At each of the trainer's evaluations a trial reports its
selection value, and Optuna's median pruner stops one that trails the completed trials there.

    result = run_sweep(SweepOptions(Path("configs/glue-mini.yaml"), Path("space.yaml"), Path("out/s")), console)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live

from reft_cli.config.reader import load_config, read_yaml
from reft_cli.config.schema import RunConfig
from reft_cli.config.splits import parse_split_spec
from reft_cli.config.validation import check_path
from reft_cli.errors import ReftError, first_line
from reft_cli.reproduce.sweep_report import trials_table, write_outputs

if TYPE_CHECKING:
    import optuna

__all__ = ["Param", "SweepOptions", "load_space", "run_sweep"]

INSTALL_HINT = "reft sweep needs Optuna: pip install 'reft[sweep]'"
STUDY_FILE = "study.db"
# What the sweep itself sets or scores on: a space may not vary them.
_RESERVED = (
    "train.output_dir",
    "train.overwrite_output_dir",
    "train.resume_from_checkpoint",
    "train.metric_for_best_model",
    "train.greater_is_better",
    "data.eval_split",
    "data.eval_dataset",
    "data.val_size",
)
_SPEC_KEYS = {"choices", "low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched config key: a list of choices, or a numeric range (int when bounds are)."""

    key: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        bounds = (self.low, self.high, self.step if self.step is not None else 1)
        return all(isinstance(v, int) and not isinstance(v, bool) for v in bounds)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SweepOptions:
    """What `reft sweep` was asked for."""

    config: Path
    space: Path
    out: Path
    trials: int = 10  # the study's total; a resumed study runs only what is missing
    study: str | None = None  # default: the config file's stem
    storage: Path | None = None  # default: OUT/study.db
    budget_minutes: float | None = None  # no new trial starts after this
    prune: bool = True  # stop a trial whose intermediate value trails the median of earlier ones


def load_space(path: Path) -> list[Param]:
    """The search space YAML: `key: {choices: [...]}` or `key: {low, high, log?, step?}`."""
    data = read_yaml(path, f"search space {path} not found")
    if not isinstance(data, dict) or not data:
        raise ReftError(f"{path}: expected a mapping of config keys to ranges or choices")
    problems = []
    params = []
    for key, spec in data.items():
        unknown = check_path(RunConfig, str(key))  # names the key, with a did-you-mean
        problem = _param_problem(str(key), spec)
        if unknown or problem:
            problems.append(unknown or f"{key}: {problem}")
        else:
            params.append(_param(str(key), spec))
    if problems:  # one line, as a config override's problems read
        raise ReftError(f"search space {path}: {'; '.join(problems)}")
    return params


def _param_problem(key: str, spec: Any) -> str | None:
    if key in _RESERVED:
        return "the sweep sets or scores on this key itself; it cannot be searched"
    if not isinstance(spec, dict) or not spec:
        return "expected {choices: [...]} or {low: ..., high: ...}"
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; use choices, or low, high, log, step"
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            return "choices must be a non-empty list, without low/high"
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            return (
                "each choice must be a number, a string, true/false or null (write a list as '2;4')"
            )
        return None
    try:
        low, high = _number(spec.get("low")), _number(spec.get("high"))
        step = _number(spec["step"]) if spec.get("step") is not None else None
    except (TypeError, ValueError):
        return "low, high and step must be numbers"
    if not low < high:
        return f"low ({low}) must be below high ({high})"
    if spec.get("log") and (low <= 0 or step is not None):
        return "log: true needs low > 0 and no step"
    return None


def _number(value: Any) -> int | float:
    """YAML 1.1 reads `1e-4` as a string; take it as the number it means."""
    if isinstance(value, bool) or value is None:
        raise TypeError(value)
    return value if isinstance(value, int | float) else float(value)


def _param(key: str, spec: dict[str, Any]) -> Param:
    if "choices" in spec:
        return Param(key, choices=tuple(spec["choices"]))
    step = _number(spec["step"]) if spec.get("step") is not None else None
    low, high = _number(spec["low"]), _number(spec["high"])
    return Param(key, low=low, high=high, log=bool(spec.get("log")), step=step)


def objective_metric(run: RunConfig) -> tuple[str, bool]:
    """(metric, greater is better) the trainer selects on; refuses a config without a selection
    set, or whose eval split is the reported test."""
    data = run.data
    if data.eval_split is None and data.eval_dataset is None and data.val_size is None:
        raise ReftError(
            "reft sweep scores each trial on a selection set, and the config has none; set "
            "data.eval_split (e.g. 'selection of validation'), data.eval_dataset or data.val_size"
        )
    if data.eval_split is not None:
        spec = parse_split_spec(data.eval_split)
        if spec.half == "test" or (spec.half is None and spec.name == "test"):
            raise ReftError(
                f"data.eval_split={data.eval_split!r} is the reported test split; a sweep selects "
                "on 'selection of SPLIT' or a data.val_size hold-out, never on test rows"
            )
    # multiple-choice selection rows score every option: accuracy is what the test reports
    default = "eval_accuracy" if data.mc_format is not None else "eval_loss"
    metric = run.train.metric_for_best_model or default
    metric = metric if metric.startswith("eval_") else f"eval_{metric}"
    greater = run.train.greater_is_better
    return metric, (not metric.endswith("loss")) if greater is None else greater


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ReftError(INSTALL_HINT) from None
    return optuna


def run_sweep(options: SweepOptions, console: Console) -> optuna.Study:
    """Run the missing trials of the study, then write best.yaml, sweep.md and the plots."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_config(options.config)
    params = load_space(options.space)
    metric, greater = objective_metric(base)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    storage = (options.storage or out / STUDY_FILE).resolve()
    name, url = options.study or options.config.stem, f"sqlite:///{storage}"
    direction = "maximize" if greater else "minimize"
    study = optuna.create_study(
        study_name=name, storage=url, direction=direction, load_if_exists=True
    )
    # Seeded apart per run, so a resumed study does not draw its first trials again.
    sampler = optuna.samplers.TPESampler(seed=base.train.seed + len(study.trials))
    # Median pruning compares a trial's selection value at each evaluation with what completed
    # trials had at the same step; the first two trials always run to the end.
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2)
        if options.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.load_study(study_name=name, storage=url, sampler=sampler, pruner=pruner)
    _fail_interrupted(study)
    study.set_user_attr("metric", metric)
    fixed = [] if base.train.metric_for_best_model else [f"train.metric_for_best_model={metric}"]
    # Trials enqueued but not started (WAITING) are run by this call, so they do not count.
    ran = [t for t in study.trials if t.state.name != "WAITING"]
    todo = max(options.trials - len(ran), 0)
    console.print(
        f"study {study.study_name!r} in {storage}: {len(ran)} trial(s) so far, "
        f"{todo} to run; objective {metric} ({study.direction.name.lower()}) on the selection set"
    )
    with Live(trials_table(study, metric), console=console, auto_refresh=False) as live:

        def show(*_: Any) -> None:
            live.update(trials_table(study, metric), refresh=True)

        objective = _objective(options, params, fixed, metric, show)
        study.optimize(
            objective,
            n_trials=todo,
            timeout=options.budget_minutes * 60 if options.budget_minutes else None,
            catch=(ReftError,),
            callbacks=[show],
        )
    best_overrides = write_outputs(study, options.config, fixed, metric, out)
    if best_overrides is None:
        console.print("[yellow]no trial completed[/]; see sweep.md for each trial's error")
    else:
        console.print(f"best trial {study.best_trial.number}: {metric}={study.best_value:.6g}")
        console.print(f"best config: {out / 'best.yaml'}  (reft train {out / 'best.yaml'})")
    console.print(f"report: {out / 'sweep.md'}")
    return study


def _reporter(trial: optuna.Trial, metric: str) -> Callable[[int, dict[str, float]], None]:
    """The trainer's eval callback: report the selection value, stop the trial if pruned. A trial
    is never stopped at its first evaluation: it may still be in warmup, where a lower learning
    rate trails every other trial and says little of where it ends."""
    evaluations = [0]

    def report(step: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[metric], step)
        evaluations[0] += 1
        if evaluations[0] > 1 and trial.should_prune():
            trial.set_user_attr("pruned_at_step", step)
            raise _optuna().TrialPruned(f"{metric}={metrics[metric]:.6g} at step {step}")

    return report


def _fail_interrupted(study: optuna.Study) -> None:
    """Trials left running by an interrupted sweep never finish: record them as failed."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def _objective(
    options: SweepOptions,
    params: Sequence[Param],
    fixed: Sequence[str],
    metric: str,
    show: Callable[..., None],
) -> Callable[[optuna.Trial], float]:
    from reft_cli.training.trainer import Trainer

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        trial.set_user_attr("started", time.time())
        overrides = [f"{p.key}={json.dumps(p.suggest(trial))}" for p in params]
        folder = options.out / f"trial-{trial.number}"
        show()
        try:
            run = load_config(
                options.config,
                [
                    *overrides,
                    *fixed,
                    f"train.output_dir={folder}",
                    "train.overwrite_output_dir=true",
                ],
            )
            summary = Trainer(run, Console(quiet=True), on_eval=_reporter(trial, metric)).train()
            value = summary.best_metric
            if value is None or not math.isfinite(value):
                raise ReftError(f"{metric} is {value}; the trial gave no finite selection value")
        except ReftError as err:
            trial.set_user_attr("error", first_line(err))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        return float(value)

    return objective
