"""What `reft sweep` shows and leaves behind: the live trials table, `best.yaml` (the base config
with the best trial's overrides, resolved, runnable by `reft train` as is), `sweep.md` (every
trial: params, value, state, seconds, error) and the plots (objective over trials; parameter
importance when there is enough to compare)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from reft_cli.config.reader import load_config
from reft_cli.engine.adapter_io import atomic_write_text

if TYPE_CHECKING:
    import optuna

__all__ = ["best_overrides", "trials_table", "write_outputs"]

BEST_NAME, REPORT_NAME = "best.yaml", "sweep.md"
OBJECTIVE_PLOT, IMPORTANCE_PLOT = "objective.png", "importance.png"


def _value(trial: optuna.trial.FrozenTrial) -> str:
    return "—" if trial.value is None else f"{trial.value:.6g}"


def _params(trial: optuna.trial.FrozenTrial) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in trial.params.items()) or "—"


def _note(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state.name == "FAIL":
        return str(trial.user_attrs.get("error", "interrupted"))
    if trial.state.name == "PRUNED":
        return f"pruned at step {trial.user_attrs.get('pruned_at_step', '?')}"
    return ""


def trials_table(study: optuna.Study, metric: str) -> Table:
    """One row per trial, the best marked; what the live display shows."""
    table = Table(
        title=f"reft sweep — {study.study_name} ({metric}, {study.direction.name.lower()})"
    )
    for column in ("#", "params", metric, "state", "seconds", "note"):
        table.add_column(column, overflow="fold")
    best = _best_number(study)
    for trial in study.trials:
        seconds = trial.user_attrs.get("seconds")
        table.add_row(
            f"{trial.number}{' *' if trial.number == best else ''}",
            _params(trial),
            _value(trial),
            trial.state.name.lower(),
            "—" if seconds is None else f"{seconds:.1f}",
            _note(trial),
        )
    return table


def _best_number(study: optuna.Study) -> int | None:
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    return study.best_trial.number if completed else None


def best_overrides(study: optuna.Study, fixed: Sequence[str]) -> list[str] | None:
    """The `key=value` overrides of the best trial (and the sweep's fixed ones), or None."""
    if _best_number(study) is None:
        return None
    params = study.best_trial.params
    return [f"{k}={json.dumps(v)}" for k, v in params.items()] + list(fixed)


def write_outputs(
    study: optuna.Study, config: Path, fixed: Sequence[str], metric: str, out: Path
) -> list[str] | None:
    """Write sweep.md and the plots, and best.yaml when a trial completed; its overrides or None."""
    overrides = best_overrides(study, fixed)
    if overrides is not None:
        _write_best(study, config, overrides, metric, out)
    atomic_write_text(out / REPORT_NAME, _markdown(study, config, metric))
    _plot_objective(study, metric, out / OBJECTIVE_PLOT)
    _plot_importance(study, out / IMPORTANCE_PLOT)
    return overrides


def _write_best(
    study: optuna.Study, config: Path, overrides: list[str], metric: str, out: Path
) -> None:
    run = load_config(config, [*overrides, f"train.output_dir={out / 'best'}"])
    trial = study.best_trial
    header = [
        f"# reft sweep {study.study_name}: trial {trial.number} of {len(study.trials)}, "
        f"{metric}={trial.value:.6g} on the selection set.",
        f"# {config} with: {' '.join(overrides)}",
        f"#   reft train {out / BEST_NAME}",
    ]
    atomic_write_text(out / BEST_NAME, "\n".join(header) + "\n" + run.dump_yaml())


def _markdown(study: optuna.Study, config: Path, metric: str) -> str:
    states = [t.state.name.lower() for t in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no trials"
    lines = [
        f"# Sweep {study.study_name}",
        "",
        f"Base config `{config}`; objective `{metric}` ({study.direction.name.lower()}) on the "
        f"selection set, never the reported test rows. Trials: {counts}.",
        "",
    ]
    best = _best_number(study)
    if best is not None:
        lines += [f"Best: trial {best}, {metric} = {study.best_value:.6g} (`best.yaml`).", ""]
    lines += [
        f"| trial | params | {metric} | state | seconds | note |",
        "|---|---|---|---|---|---|",
    ]
    for t in study.trials:
        seconds = t.user_attrs.get("seconds")
        params = _params(t).replace("|", "\\|")
        note = _note(t).replace("|", "\\|")
        lines.append(
            f"| {t.number} | {params} | {_value(t)} | {t.state.name.lower()} | "
            f"{'—' if seconds is None else f'{seconds:.1f}'} | {note} |"
        )
    return "\n".join(lines) + "\n"


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(6, 3.5))


def _plot_objective(study: optuna.Study, metric: str, path: Path) -> None:
    """Each completed trial's value and the best so far, by trial number."""
    done = [t for t in study.trials if t.value is not None]
    plt, (fig, ax) = _figure()
    if done:
        numbers, values = [t.number for t in done], [t.value for t in done]
        pick = max if study.direction.name == "MAXIMIZE" else min
        running = [pick(values[: i + 1]) for i in range(len(values))]
        ax.plot(numbers, values, "o", label="trial")
        ax.step(numbers, running, where="post", label="best so far")
        ax.legend()
    failed = [t.number for t in study.trials if t.state.name == "FAIL"]
    for number in failed:
        ax.axvline(number, color="red", alpha=0.2)
    ax.set_xlabel("trial (red: failed)" if failed else "trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: {metric} per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_importance(study: optuna.Study, path: Path) -> None:
    """fANOVA importances; drawn only with ≥ 2 completed trials over more than one parameter."""
    import optuna

    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    names = {k for t in done for k in t.params}
    if len(done) < 2 or len(names) < 2:
        return
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every completed trial has the same value
        return
    plt, (fig, ax) = _figure()
    keys = list(importances)[::-1]
    ax.barh(keys, [importances[k] for k in keys])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"{study.study_name}: parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
