"""`reft eval`: score an adapter, or its base model, on the paper's benchmarks.

`plan_eval` (eval_plan.py) resolves what to evaluate; this module runs it. Prompts use the template
the adapter was trained with, so the model sees its training format. Every task's rows are loaded
and checked before the model is, so a bad task name or dataset fails in seconds, not after an
hour of generation.

Writes `eval_results.json` (metrics, example counts, adapter and config identity, timing),
`predictions/<task>.jsonl` (prompt, generation, parsed answer, gold, correct) and, for
Alpaca-Eval, `alpaca_eval.json` in alpaca_eval's model-outputs format. With `scoring: loglik` the
multiple-choice sets are scored by each option's log-likelihood instead (loglik.py), and each
prediction records the options' log-likelihoods, the chosen and the gold option.

    report = run_eval(EvalOptions(adapter=Path("out/run"), tasks=("boolq",), limit=50), console)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from reft_cli.config.schema import DataConfig
from reft_cli.data.labels import label_ids
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import (
    ALPACA_EVAL_NAME,
    PREDICTIONS_DIR,
    RESULTS_NAME,
    predictions_name,
)
from reft_cli.engine.loading import LoadedModel
from reft_cli.engine.lora_config import adapter_files
from reft_cli.engine.staged_dir import staged_dir
from reft_cli.errors import ReftError
from reft_cli.evaluation.loglik import choose, continuation_logliks, encode_requests
from reft_cli.evaluation.plan import EvalOptions, EvalPlan, plan_eval
from reft_cli.evaluation.predict import classify, generate_texts, load_for_eval
from reft_cli.evaluation.scorers import (
    alpaca_eval_record,
    score_commonsense,
    score_gsm8k,
    score_math,
)
from reft_cli.evaluation.tasks import TaskRef, load_task_rows
from reft_cli.metrics import glue_metrics

__all__ = [
    "EvalOptions",
    "TaskResult",
    "adapter_identity",
    "check_output",
    "evaluate_task",
    "plan_eval",
    "results_table",
    "run_eval",
]

_SCORERS = {"commonsense": score_commonsense, "math": score_math, "gsm8k": score_gsm8k}


@dataclass
class TaskResult:
    name: str
    metric: str
    score: float | None
    metrics: dict[str, float]
    num_examples: int
    source: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    truncated: int = 0
    max_new_tokens: int | None = None  # the generation budget used; None: nothing generated

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "score": self.score,
            "metrics": self.metrics,
            "num_examples": self.num_examples,
            "source": self.source,
            "seconds": round(self.seconds, 2),
            "truncated_prompts": self.truncated,
            "max_new_tokens": self.max_new_tokens,
        }


# ---------------------------------------------------------------------------- one task


def _check_kind(subject: LoadedModel, ref: TaskRef) -> None:
    """GLUE needs a classifier with the task's number of outputs; the rest need a generator."""
    is_glue = ref.task.kind == "glue"
    if is_glue and subject.task_type != "seq_cls":
        raise ReftError(
            f"task {ref.name} needs a sequence classification model (model.task_type: seq_cls); "
            "this one generates text"
        )
    if not is_glue and subject.task_type == "seq_cls":
        raise ReftError(
            f"task {ref.name} generates text but this is a classification model; evaluate it "
            "on GLUE tasks"
        )
    outputs = subject.base_model.config.num_labels
    if is_glue and outputs != ref.task.num_labels:
        raise ReftError(
            f"task {ref.name} has {ref.task.num_labels} output(s) but the model's head has "
            f"{outputs}; evaluate an adapter trained on {ref.name}"
        )


@dataclass
class _Prepared:
    ref: TaskRef
    items: list[dict[str, Any]]


def _prepare(plan: EvalPlan) -> list[_Prepared]:
    seed = plan.run.train.seed
    prepared = [
        _Prepared(
            ref, ref.task.items(load_task_rows(ref, plan.split, plan.limit, seed), ref.source)
        )
        for ref in plan.tasks
    ]
    if plan.scoring == "loglik":
        for item in prepared:
            _check_options(item)
    return prepared


def _check_options(prepared: _Prepared) -> None:
    """Log-likelihood scoring needs each option's text, which LLM-Adapters rows do not have."""
    if all("choices" in item for item in prepared.items):
        return
    raise ReftError(
        f"task {prepared.ref.name}: --scoring loglik needs each answer option's text, but "
        f"{prepared.ref.source} has LLM-Adapters rows (instruction and answer only); evaluate a "
        f"copy with the raw columns ({', '.join(prepared.ref.task.columns)}) or use --scoring "
        "generate"
    )


def _prompt_fields(item: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in item.items() if k != "gold"}
    if "prompt" not in fields:
        text = fields.get("instruction", fields.get("question"))
        if text is not None:
            fields["prompt"] = text
    return fields


def _tokenize(
    plan: EvalPlan, subject: LoadedModel, prepared: _Prepared
) -> tuple[list[str], list[list[int]], int]:
    from reft_cli.data.templates import make_template

    task = prepared.ref.task
    data = plan.run.data
    spec = plan.template or task.template
    columns = dict(data.columns) if task.kind == "glue" else {}
    cfg = DataConfig(template=spec, columns=columns, system_prompt=data.system_prompt)
    template = make_template(cfg, subject.tokenizer)
    prompts = [template.prompt(_prompt_fields(item)) for item in prepared.items]
    encoded = subject.tokenizer(prompts, add_special_tokens=not template.has_special_tokens)
    ids = list(encoded["input_ids"])
    if any(not row for row in ids):
        raise ReftError(f"task {task.name}: a prompt tokenizes to no tokens; check the template")
    truncated = sum(len(row) > data.max_length for row in ids)
    ids = [row[: data.max_length] for row in ids]
    subject.check_prompt_lengths([len(row) for row in ids], f"task {task.name}: a prompt")
    return prompts, ids, truncated


def evaluate_task(
    plan: EvalPlan, subject: LoadedModel, prepared: _Prepared, progress: Progress
) -> TaskResult:
    if plan.scoring == "loglik":
        return _evaluate_loglik(plan, subject, prepared, progress)
    ref, items = prepared.ref, prepared.items
    start = time.perf_counter()
    prompts, ids, truncated = _tokenize(plan, subject, prepared)
    bar = progress.add_task(ref.name, total=len(items))

    def advance(n: int) -> None:
        progress.update(bar, advance=n)

    if ref.task.kind == "glue":
        preds = classify(subject, ids, plan.batch_size, advance)
        result = _score_glue(ref, items, prompts, preds, subject)
    else:
        max_new = plan.max_new_tokens or ref.task.max_new_tokens  # None: the paper's per task
        texts = generate_texts(subject, ids, plan.batch_size, max_new, advance)
        result = _score_generations(ref, items, prompts, texts)
        result.max_new_tokens = max_new
    result.seconds = time.perf_counter() - start
    result.truncated = truncated
    return result


def _evaluate_loglik(
    plan: EvalPlan, subject: LoadedModel, prepared: _Prepared, progress: Progress
) -> TaskResult:
    """Every option scored by its log-likelihood; the progress bar counts options."""
    ref, start = prepared.ref, time.perf_counter()
    requests, truncated = encode_requests(
        subject.tokenizer, prepared.items, plan.run.data.max_length
    )
    bar = progress.add_task(f"{ref.name} (options)", total=len(requests))
    logliks = continuation_logliks(
        subject, requests, plan.batch_size, lambda n: progress.update(bar, advance=n)
    )
    predictions, metrics = choose(prepared.items, logliks)
    task = ref.task
    return TaskResult(
        task.name, task.metric, metrics[task.metric], metrics, len(prepared.items), ref.source,
        predictions, time.perf_counter() - start, truncated,
    )  # fmt: skip


def _score_generations(
    ref: TaskRef, items: list[dict], prompts: list[str], texts: list[str]
) -> TaskResult:
    task = ref.task
    predictions = []
    correct = 0
    for i, (item, prompt, text) in enumerate(zip(items, prompts, texts, strict=True)):
        entry = {"index": i, "prompt": prompt, "generation": text}
        if task.kind == "alpaca_eval":
            entry.update(instruction=item["instruction"], parsed=None, gold=None, correct=None)
        else:
            scored = _SCORERS[task.kind](text, item["gold"])
            gold = item["gold"]
            if task.kind == "gsm8k":
                gold = str(gold).split("####")[-1].strip()
            entry.update(parsed=scored.parsed, gold=gold, correct=scored.correct)
            correct += scored.correct
        predictions.append(entry)
    if task.kind == "alpaca_eval":
        return TaskResult(task.name, task.metric, None, {}, len(items), ref.source, predictions)
    score = correct / len(items)
    return TaskResult(
        task.name, task.metric, score, {"accuracy": score}, len(items), ref.source, predictions
    )


def _score_glue(
    ref: TaskRef, items: list[dict], prompts: list[str], preds: list[float], subject: LoadedModel
) -> TaskResult:
    task = ref.task
    golds = [item["gold"] for item in items]
    if any(isinstance(g, str) for g in golds):
        names = None
        if subject.has_adapter:
            names = subject.model.reft_config.tokenizer.get("label_names")
        golds = label_ids(golds, names or None, f" of task {task.name}", "adapter's")
    regression = task.num_labels == 1
    if not regression:
        preds = [int(p) for p in preds]
        golds = [int(g) for g in golds]
    metrics = glue_metrics(task.name, preds, golds)
    predictions = [
        {
            "index": i,
            "prompt": prompt,
            "prediction": pred,
            "gold": gold,
            "correct": None if regression else pred == gold,
        }
        for i, (prompt, pred, gold) in enumerate(zip(prompts, preds, golds, strict=True))
    ]
    score = metrics[task.metric]
    return TaskResult(task.name, task.metric, score, metrics, len(items), ref.source, predictions)


# ---------------------------------------------------------------------------- the whole run


def run_eval(options: EvalOptions, console: Console) -> dict[str, Any]:
    """Evaluate every task, print the table, write the outputs; returns eval_results.json's data."""
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    plan = plan_eval(options)
    check_output(plan.output, options.overwrite)
    if plan.adapter is None:
        console.print(f"[yellow]note[/]: no adapter; evaluating the base model {_base(plan)}")
    prepared = _prepare(plan)
    glue = [ref.task.num_labels for ref in plan.tasks if ref.task.kind == "glue"]
    subject = load_for_eval(
        plan.adapter,
        plan.run.model,
        glue[0] if glue else None,
        device=plan.device,
        record=plan.record,
    )
    for item in prepared:
        _check_kind(subject, item.ref)
    results = []
    with _progress(console) as progress:
        for item in prepared:
            results.append(evaluate_task(plan, subject, item, progress))
    report = _report(plan, results, started, time.perf_counter() - clock)
    _write(plan, report, results)
    for result in results:
        if result.truncated:
            console.print(
                f"[yellow]warning[/]: {result.truncated} {result.name} prompts were longer than "
                f"data.max_length={plan.run.data.max_length} and were cut to it"
            )
    console.print(results_table(report))
    console.print(f"results: {plan.output / RESULTS_NAME}")
    return report


def _base(plan: EvalPlan) -> str:
    if plan.record is not None:
        return plan.record.base_model or "?"
    return plan.run.model.name_or_path


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def adapter_identity(folder: Path) -> dict[str, Any]:
    """The adapter's path and the hashes of its weights and record, for eval_results.json."""
    weights, adapter_config = adapter_files(folder)
    return {
        "path": str(folder.resolve()),
        "weights_sha256": _sha256(weights),
        "config_sha256": _sha256(adapter_config),
    }


def _report(
    plan: EvalPlan, results: list[TaskResult], started: datetime.datetime, seconds: float
) -> dict[str, Any]:
    adapter = adapter_identity(plan.adapter) if plan.adapter is not None else None
    config = None
    if plan.config_path is not None:
        config = {
            "path": str(plan.config_path.resolve()),
            "resolved_sha256": hashlib.sha256(plan.run.dump_yaml().encode()).hexdigest(),
        }
    scores = [r.score for r in results if r.score is not None]
    return {
        "base_model": _base(plan),
        "adapter": adapter,
        "config": config,
        "template": plan.template,
        "split": plan.split,
        "limit": plan.limit,
        "batch_size": plan.batch_size,
        "max_new_tokens": plan.max_new_tokens,
        "scoring": plan.scoring,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "average": sum(scores) / len(scores) if scores else None,
        "tasks": {r.name: r.summary() for r in results},
    }


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to mix new results into an old folder (stale predictions of tasks not rerun)."""
    if output.exists() and not output.is_dir():
        raise ReftError(f"--output {output} is a file, not a folder; choose a folder path")
    if not overwrite and output.is_dir() and any(output.iterdir()):
        raise ReftError(
            f"{output} is not empty (earlier results?); choose another --output or pass "
            "--overwrite to replace the whole folder"
        )


def _write(plan: EvalPlan, report: dict[str, Any], results: list[TaskResult]) -> None:
    """Write the whole folder beside its place, then swap it in: never old and new mixed."""
    with staged_dir(plan.output, replace=True) as folder:
        for result in results:
            lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
            atomic_write_text(folder / PREDICTIONS_DIR / predictions_name(result.name), lines)
            if result.name == "alpaca_eval":
                generator = plan.adapter.name if plan.adapter is not None else _base(plan)
                records = [
                    alpaca_eval_record(p["instruction"], p["generation"], generator)
                    for p in result.predictions
                ]
                text = json.dumps(records, indent=2) + "\n"
                atomic_write_text(folder / ALPACA_EVAL_NAME, text)
        atomic_write_text(folder / RESULTS_NAME, json.dumps(report, indent=2) + "\n")


def results_table(report: dict[str, Any]) -> Table:
    """One row per task: its headline metric (in %), every metric, and the example count."""
    adapter = report["adapter"]
    subject = Path(adapter["path"]).name if adapter else f"{report['base_model']} (no adapter)"
    title = f"reft eval — {subject}"
    table = Table(title=title)
    for name in ("task", "metric", "score", "all metrics", "examples", "time"):
        table.add_column(name, justify="right" if name in ("score", "examples", "time") else "left")
    for name, task in report["tasks"].items():
        score = "—" if task["score"] is None else f"{100 * task['score']:.2f}"
        others = ", ".join(f"{k} {100 * v:.2f}" for k, v in task["metrics"].items())
        examples, seconds = str(task["num_examples"]), f"{task['seconds']:.1f} s"
        table.add_row(name, task["metric"], score, others, examples, seconds)
    if report["average"] is not None and len(report["tasks"]) > 1:
        table.add_row("average", "", f"{100 * report['average']:.2f}", "", "", "")
    return table
