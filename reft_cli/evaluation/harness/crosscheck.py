"""Two implementations of the same benchmarks, row by row: `reft eval --scoring loglik` and lm-eval.

Both score each answer option by its continuation's log-likelihood, on the same offline rows (the
first N of each validation split). Where the prompts agree, each row's pick must agree, so any
difference is a bug in one of them. The prompts agree for piqa, arc_easy, arc_challenge,
hellaswag, winogrande and openbookqa; boolq differs on purpose (reft's context carries the
question without its passage, as its LLM-Adapters instruction does; lm-eval's has the passage).
Only `acc` is compared: reft's `acc_norm` divides by the continuation's characters including its
leading space, lm-eval's by the choice's characters without it.

    rows = crosscheck(["piqa"], limit=10, config=Path("configs/commonsense-loglik.yaml"))
    rows["piqa"].agreement  # 1.0
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from reft_cli.engine.folder_names import PREDICTIONS_DIR, predictions_name
from reft_cli.evaluation.evaluate import EvalOptions, run_eval
from reft_cli.evaluation.harness.offline_tasks import OFFLINE_TASKS

__all__ = ["SAME_PROMPTS", "Crosscheck", "crosscheck", "harness_correct", "reft_correct"]

SAME_PROMPTS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "openbookqa")


@dataclass(frozen=True)
class Crosscheck:
    """One task's rows: whether each was answered right by reft's scorer and by lm-eval's."""

    task: str
    reft: list[bool]
    harness: list[bool]
    reft_seconds: float
    harness_seconds: float

    @property
    def agreement(self) -> float:
        same = sum(a == b for a, b in zip(self.reft, self.harness, strict=True))
        return same / len(self.reft)

    @property
    def disagreeing_rows(self) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(self.reft, self.harness, strict=True)) if a != b]


def reft_correct(
    task: str,
    limit: int,
    *,
    adapter: Path | None,
    config: Path | None,
    device: str = "auto",
    batch_size: int = 8,
) -> list[bool]:
    """Each of the first `limit` validation rows: did `reft eval --scoring loglik` pick the gold?"""
    source = f"{task}=pkg:{OFFLINE_TASKS[task].package[0]}/{OFFLINE_TASKS[task].data}"
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "eval"
        options = EvalOptions(
            config=config, adapter=adapter, no_adapter=adapter is None, tasks=[source],
            split="validation", limit=limit, scoring="loglik", output=output, device=device,
            batch_size=batch_size,
        )  # fmt: skip
        run_eval(options, Console(quiet=True))
        lines = (output / PREDICTIONS_DIR / predictions_name(task)).read_text().splitlines()
    return [bool(json.loads(line)["correct"]) for line in lines]


def harness_correct(task: str, limit: int, lm: object, manager: object) -> list[bool]:
    """Each of the first `limit` rows of lm-eval's offline task: is its `acc` 1?"""
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, limit=limit, log_samples=True
    )
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [bool(sample["acc"]) for sample in samples]


def crosscheck(
    tasks: Sequence[str],
    limit: int,
    *,
    adapter: Path | None = None,
    config: Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
) -> dict[str, Crosscheck]:
    """Both scorers on the first `limit` rows of each task (the adapter's, or `config`'s base)."""
    from lm_eval.tasks import TaskManager

    from reft_cli.config.reader import load_config
    from reft_cli.evaluation.harness.model import ReftLM
    from reft_cli.evaluation.harness.offline_tasks import write_offline_tasks

    manager = TaskManager(include_path=str(write_offline_tasks()[0]), include_defaults=False)

    base = None if adapter is not None or config is None else load_config(config).model
    lm = ReftLM(
        adapter=str(adapter) if adapter is not None else None,
        pretrained=base.name_or_path if base is not None else None,
        device=device,
        batch_size=batch_size,
    )
    out = {}
    for task in tasks:
        start = time.perf_counter()
        ours = reft_correct(
            task, limit, adapter=adapter, config=config, device=device, batch_size=batch_size
        )
        middle = time.perf_counter()
        theirs = harness_correct(task, limit, lm, manager)
        end = time.perf_counter()
        out[task] = Crosscheck(task, ours, theirs, middle - start, end - middle)
    return out
