"""A recipe's report: every metric as mean ± std over seeds, the targets, pass or fail.

Reads only what the runs left on disk (eval_results.json, train.json), so a report can be rebuilt
at any time, and a partly run recipe reports what it has with the rest marked pending.
Numbers are in points (percent), as `reft eval` prints them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import (
    EVAL_DIR,
    REPORT_JSON_NAME,
    REPORT_MARKDOWN_NAME,
    REPORT_PLOT_NAME,
    RESULTS_NAME,
    TRAIN_DONE_NAME,
)
from reft_cli.reproduce.recipes import AVERAGE, Expectation, Recipe

__all__ = ["Outcome", "RecipeReport", "Stat", "build_report", "write_report"]


@dataclass(frozen=True)
class Stat:
    """One metric over seeds, in points."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        if len(self.values) == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={len(self.values)})"


@dataclass
class RunResults:
    """What one run's finished seeds measured: (task, metric) -> Stat, plus costs."""

    stats: dict[tuple[str, str], Stat] = field(default_factory=dict)
    headline: dict[str, str] = field(default_factory=dict)  # task -> its headline metric
    seeds_done: int = 0
    seeds_total: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    trainable_parameters: int | None = None

    def get(self, task: str, metric: str | None) -> Stat | None:
        if task == AVERAGE:
            return self.stats.get((AVERAGE, "score"))
        return self.stats.get((task, metric or self.headline.get(task, "score")))


@dataclass(frozen=True)
class Outcome:
    expectation: Expectation
    status: str  # pass, fail, pending
    measured: Stat | None
    detail: str


@dataclass
class RecipeReport:
    recipe: Recipe
    runs: dict[str, RunResults]
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "fail"]

    def metric_rows(self) -> list[tuple[str, str]]:
        """(task, metric) pairs in first-seen order; the average last, when some run has several
        tasks (with one task it repeats that task's score)."""
        rows: list[tuple[str, str]] = []
        for results in self.runs.values():
            rows += [key for key in results.stats if key not in rows and key[0] != AVERAGE]
        if any(len(r.headline) > 1 for r in self.runs.values()):
            rows.append((AVERAGE, "score"))
        return rows

    def table(self) -> Table:
        table = Table(title=f"{self.recipe.name}: results (points; mean ± std over seeds)")
        table.add_column("task")
        table.add_column("metric")
        for run in self.recipe.runs:
            table.add_column(run.title(), justify="right")
        for task, metric in self.metric_rows():
            cells = []
            for run in self.recipe.runs:
                stat = self.runs[run.name].stats.get((task, metric))
                cells.append(stat.text() if stat else "—")
            table.add_row(task, metric, *cells)
        for outcome in self.outcomes:
            style = {"pass": "green", "fail": "bold red", "pending": "yellow"}[outcome.status]
            table.caption = (table.caption or "") + (
                f"\n[{style}]{outcome.status}[/]: {outcome.expectation.describe()} — {outcome.detail}"
            )
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name,
            "description": self.recipe.description,
            "passed": not self.failed,
            "runs": {
                name: {
                    "label": self.recipe.run(name).title(),
                    "seeds_done": r.seeds_done,
                    "seeds_total": r.seeds_total,
                    "train_seconds": round(r.train_seconds, 1),
                    "eval_seconds": round(r.eval_seconds, 1),
                    "trainable_parameters": r.trainable_parameters,
                    "metrics": {
                        f"{task}/{metric}": {
                            "mean": stat.mean,
                            "std": stat.std,
                            "values": stat.values,
                        }
                        for (task, metric), stat in r.stats.items()
                    },
                }
                for name, r in self.runs.items()
            },
            "expectations": [
                {
                    "runs": o.expectation.subjects(),
                    "task": o.expectation.task,
                    "metric": o.expectation.metric,
                    "value": o.expectation.value,
                    "tolerance": o.expectation.tolerance,
                    "above": o.expectation.above,
                    "source": o.expectation.source,
                    "measured": o.measured.mean if o.measured else None,
                    "status": o.status,
                    "detail": o.detail,
                }
                for o in self.outcomes
            ],
        }

    def markdown(self) -> str:
        runs = self.recipe.runs
        lines = [f"# {self.recipe.name}", ""]
        if self.recipe.description:
            lines += [self.recipe.description.strip(), ""]
        lines += ["Points (percent); mean ± std over seeds.", ""]
        lines += ["| task | metric | " + " | ".join(r.title() for r in runs) + " |"]
        lines += ["|---|---|" + "---|" * len(runs)]
        for task, metric in self.metric_rows():
            cells = [
                stat.text() if (stat := self.runs[r.name].stats.get((task, metric))) else "—"
                for r in runs
            ]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
        lines += ["", "| run | seeds | trainable parameters | train time | eval time |"]
        lines += ["|---|---|---|---|---|"]
        for run in runs:
            r = self.runs[run.name]
            params = f"{r.trainable_parameters:,}" if r.trainable_parameters is not None else "—"
            lines.append(
                f"| {run.title()} | {r.seeds_done}/{r.seeds_total} | {params} | "
                f"{r.train_seconds / 60:.1f} min | {r.eval_seconds / 60:.1f} min |"
            )
        if self.outcomes:
            lines += ["", "| expectation | target | measured | result | source |"]
            lines += ["|---|---|---|---|---|"]
            for o in self.outcomes:
                measured = o.measured.text() if o.measured else "—"
                lines.append(
                    f"| {o.expectation.describe()} | {_target(o.expectation)} | {measured} | "
                    f"**{o.status}** ({o.detail}) | {o.expectation.source or '—'} |"
                )
        verdict = "FAILED" if self.failed else "passed"
        return "\n".join([*lines, "", f"Result: {verdict}.", ""])


def build_report(recipe: Recipe) -> RecipeReport:
    runs = {run.name: _collect(recipe, run.name) for run in recipe.runs}
    return RecipeReport(recipe, runs, [_judge(e, runs) for e in recipe.expect])


def write_report(recipe: Recipe, report: RecipeReport) -> None:
    root = recipe.output_dir
    atomic_write_text(root / REPORT_MARKDOWN_NAME, report.markdown())
    atomic_write_text(root / REPORT_JSON_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
    _plot(report, root / REPORT_PLOT_NAME)


def _collect(recipe: Recipe, name: str) -> RunResults:
    run = recipe.run(name)
    out = RunResults(seeds_total=len(run.seeds))
    values: dict[tuple[str, str], list[float]] = {}
    for seed in run.seeds:
        folder = recipe.output_dir / name / f"seed{seed}"
        results = folder / EVAL_DIR / RESULTS_NAME
        if not results.is_file():
            continue
        data = json.loads(results.read_text())
        out.seeds_done += 1
        out.eval_seconds += data.get("seconds") or 0.0
        for task, summary in data["tasks"].items():
            out.headline[task] = summary["metric"]
            for metric, value in summary["metrics"].items():
                if value is not None:
                    values.setdefault((task, metric), []).append(100 * value)
        if data.get("average") is not None:
            values.setdefault((AVERAGE, "score"), []).append(100 * data["average"])
        trained = folder / TRAIN_DONE_NAME
        if trained.is_file():
            info = json.loads(trained.read_text())
            out.train_seconds += info["seconds"]
            out.trainable_parameters = info["trainable_parameters"] + info["head_parameters"]
    out.stats = {key: Stat(v) for key, v in values.items()}
    return out


def _judge(expect: Expectation, runs: dict[str, RunResults]) -> Outcome:
    subjects = [runs[name] for name in expect.subjects()]
    stats = [r.get(expect.task, expect.metric) for r in subjects]
    if any(s is None for s in stats) or any(r.seeds_done < r.seeds_total for r in subjects):
        missing = (
            "no results yet" if any(s is None for s in stats) else "not every seed has finished"
        )
        return Outcome(expect, "pending", None, missing)
    # one run: its seeds; several: the mean of each run's mean (the paper's GLUE average)
    measured = stats[0] if expect.run else Stat([s.mean for s in stats])  # type: ignore[union-attr]
    higher = not expect.lower_is_better
    checks: list[tuple[bool, str]] = []
    if expect.value is not None:
        bound = expect.value - expect.tolerance if higher else expect.value + expect.tolerance
        ok = measured.mean >= bound if higher else measured.mean <= bound
        sign = "≥" if higher else "≤"
        checks.append((ok, f"{measured.mean:.2f} {sign} {bound:.2f} needed"))
    if expect.above is not None:
        other = runs[expect.above].get(expect.task, expect.metric)
        if other is None:
            return Outcome(expect, "pending", measured, f"{expect.above} has no results yet")
        ok = measured.mean > other.mean if higher else measured.mean < other.mean
        word = "above" if higher else "below"
        checks.append(
            (ok, f"{measured.mean:.2f} vs {expect.above} {other.mean:.2f}, {word} needed")
        )
    status = "pass" if all(ok for ok, _ in checks) else "fail"
    return Outcome(expect, status, measured, "; ".join(text for _, text in checks))


def _target(expect: Expectation) -> str:
    parts = []
    if expect.value is not None:
        parts.append(
            f"{expect.value:g} ± {expect.tolerance:g}" if expect.tolerance else f"{expect.value:g}"
        )
    if expect.above is not None:
        parts.append(f"{'below' if expect.lower_is_better else 'above'} {expect.above}")
    return ", ".join(parts)


def _plot(report: RecipeReport, path: Path) -> None:
    """Headline metric per task, one bar per run, with the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (task, metric)
        for task, metric in report.metric_rows()
        if task == AVERAGE or any(r.headline.get(task) == metric for r in report.runs.values())
    ]
    if not rows:
        return
    runs = report.recipe.runs
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) * max(1, len(runs) / 2)), 4))
    for i, run in enumerate(runs):
        stats = [report.runs[run.name].stats.get(key) for key in rows]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(
            xs,
            [s.mean if s else 0 for s in stats],
            width,
            yerr=[s.std if s else 0 for s in stats],
            label=run.title(),
            capsize=2,
        )
    ax.set_xticks(range(len(rows)), [task for task, _ in rows], rotation=30, ha="right")
    ax.set_ylabel("score (points)")
    ax.set_title(report.recipe.name)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
