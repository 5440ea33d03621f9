"""Training data: load rows, turn them into token ids with an exact prompt boundary, batch them.

Interventions read prompt positions, so the prompt and the response are tokenized separately and
concatenated: the boundary is exact, and `max_length` drops an over-long example (counted, for the
caller to warn about) rather than cutting either part. Each example keeps its row index
(`example_id`) through the pipeline so frozen states can later be cached per example.

    data = load_data(cfg.data, "causal_lm", tokenizer)
    batch = collate(data.train[:8], tokenizer.pad_token_id)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from reft_cli.config.schema import DataConfig
from reft_cli.config.splits import half_spec, take_split
from reft_cli.data.labels import example_labels
from reft_cli.data.mc_format import Option, gold_options, row_options
from reft_cli.data.oe_eval import REQUESTS_FILE, read_requests
from reft_cli.data.templates import RESPONSE_COLUMNS, PromptTemplate, make_template, missing_column
from reft_cli.errors import ReftError, first_line

__all__ = [
    "DATA_FILE_BUILDERS",
    "Example",
    "LoadedData",
    "build_examples",
    "collate",
    "label_names_of",
    "load_data",
    "load_rows",
    "split_train_eval",
]

IGNORE_INDEX = -100

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""Local file extensions and the `datasets` builder that reads each."""

Rows = datasets.Dataset | Sequence[Mapping[str, Any]]


@dataclass
class Example:
    """One tokenized row; `example_id` is its index in the loaded dataset."""

    example_id: int
    input_ids: list[int]
    prompt_length: int
    labels: list[int] | None = None  # causal LM: -100 on the prompt, response ids after it
    label: int | float | None = None  # sequence classification (float: regression)
    choice: tuple[int, int] | None = None  # mc_format eval: (this option, the row's gold option)


@dataclass
class LoadedData:
    """What `reft train` needs from the data section, ready to batch."""

    train: list[Example]
    eval: list[Example] | None
    dropped_train: int
    dropped_eval: int
    label_names: list[str] | None  # seq_cls with string labels: names in id order
    num_labels: int | None  # seq_cls: classes seen (1 for regression); None for causal LM
    template: str  # the template spec the adapter records


# ---------------------------------------------------------------------------- loading rows


def load_rows(
    source: str, config: str | None = None, split: str = "train", revision: str | None = None
) -> datasets.Dataset:
    """One split of a dataset: a local data file, a save_to_disk folder, `pkg:` data or a hub id.

    A single data file is one split whatever `split` says; folders and hub datasets pick it. An
    oe-eval `requests.jsonl.gz` file gives its docs (oe_eval.py). `revision` is the hub's.
    """
    path = _package_path(source) if source.startswith("pkg:") else Path(source).expanduser()
    if path.exists():
        rows = _load_local(path, split)
    elif source.startswith("pkg:") or _looks_like_path(source):
        raise ReftError(f"dataset {source} not found (no file or folder at {path}); check the path")
    else:
        rows = _load_hub(source, config, split, revision)
    if len(rows) == 0:
        raise _no_rows(source)
    return rows


def _no_rows(source: object) -> ReftError:
    return ReftError(f"dataset {source} has no rows; check the file, or the split (data.split)")


def _looks_like_path(source: str) -> bool:
    """Hub ids look like `owner/name`; paths start like one or end in a data-file extension."""
    suffix = Path(source).suffix.lower()
    return source.startswith((".", "/", "~")) or suffix in DATA_FILE_BUILDERS or suffix == ".gz"


def _package_path(source: str) -> Path:
    """`pkg:PACKAGE/rel/path` inside an installed package, found without importing it."""
    package, _, relative = source.removeprefix("pkg:").partition("/")
    try:
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ReftError(f"dataset {source}: no installed package named {package!r}")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _load_local(path: Path, split: str) -> datasets.Dataset:
    if path.is_dir():
        markers = ("dataset_info.json", "state.json", "dataset_dict.json")
        try:
            if any((path / m).is_file() for m in markers):  # written by save_to_disk
                loaded = datasets.load_from_disk(str(path))
            else:  # a folder of data files
                loaded = datasets.load_dataset(str(path))
        except Exception as err:
            raise ReftError(f"could not read dataset folder {path}: {first_line(err)}") from err
        return _pick_split(loaded, split, str(path))
    if path.name.endswith(REQUESTS_FILE):
        return read_requests(path)
    builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ReftError(
            f"dataset file {path} has an unsupported extension; use one of "
            f"{', '.join(DATA_FILE_BUILDERS)}, or a folder written by save_to_disk"
        )
    if path.stat().st_size == 0:
        raise _no_rows(path)
    if path.suffix == ".jsonl":
        _check_jsonl(path)
    try:
        with _no_progress_bars():  # reft shows its own progress; a local file reads in a blink
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except ValueError as err:
        if "corresponds to no data" in str(err):  # a csv header, `[]`, blank lines
            raise _no_rows(path) from err
        raise ReftError(f"could not read {path} as {builder}: {first_line(err)}") from err
    except Exception as err:
        raise ReftError(f"could not read {path} as {builder}: {first_line(err)}") from err


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """datasets' own bars ("Generating train split") off while reading, as they were after."""
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _check_jsonl(path: Path) -> None:
    """Name the first line that is not UTF-8 or not a JSON object (datasets would only say that
    the file failed), so the user can fix that line."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ReftError(
                    f"{path}:{number}: not UTF-8 text; re-save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ReftError(f"{path}:{number}: bad JSON line ({err}); fix it") from None
            if not isinstance(row, dict):
                raise ReftError(f"{path}:{number}: not a JSON object; each line must be one")


def _load_hub(
    source: str, config: str | None, split: str, revision: str | None = None
) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source, config, split=split, revision=revision)
    except ValueError as err:
        found = re.search(r"Unknown split \"[^\"]*\"\. Should be one of (\[.*\])", str(err))
        if found:
            raise ReftError(
                f"dataset {source} has no split {split!r}; available: {found.group(1)}"
            ) from err
        raise ReftError(f"could not load dataset {source}: {first_line(err)}") from err
    except Exception as err:
        raise ReftError(
            f"could not load dataset {source!r} from the hub: {first_line(err)} (check the "
            "name and the network, or use a local json/jsonl/csv/parquet file)"
        ) from err


def _pick_split(loaded: Any, split: str, name: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split not in loaded:
        raise ReftError(
            f"dataset {name} has no split {split!r}; available: {', '.join(loaded)} "
            "(set data.split)"
        )
    return loaded[split]


# ---------------------------------------------------------------------------- tokenizing


def _records(rows: Rows) -> list[Mapping[str, Any]]:
    """Rows as dicts, converted once (iterating a Dataset decodes every row each time)."""
    return rows.to_list() if isinstance(rows, datasets.Dataset) else list(rows)


def _columns(rows: Rows) -> list[str]:
    if isinstance(rows, datasets.Dataset):
        return list(rows.column_names)
    return list(rows[0]) if len(rows) else []


def label_names_of(rows: Rows, data_cfg: DataConfig) -> list[str] | None:
    """Class names in id order: a ClassLabel's names, sorted string labels, or None (numeric)."""
    column = data_cfg.columns.get("label", "label")
    if column not in _columns(rows):
        raise missing_column([column], "label", _columns(rows))
    if isinstance(rows, datasets.Dataset):
        feature = rows.features[column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        values = list(rows[column])
    else:
        values = [row[column] for row in rows]
    if any(isinstance(v, str) for v in values):
        return sorted({str(v) for v in values})
    return None


def build_examples(
    rows: Rows,
    data_cfg: DataConfig,
    task_type: str,
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate,
    *,
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
    every_option: bool = False,
) -> tuple[list[Example], int]:
    """Tokenize rows into examples; returns them and how many were dropped as over max_length.

    With data.mc_format, training examples are each row's gold option; `every_option` gives every
    option of every row instead (each tagged with its `choice`), which selection accuracy scores.

    seq_cls: `label_names` fixes the string-label ids (default: this data's sorted labels, see
    `label_names_of`); `num_labels=1` means regression, with float labels.
    """
    records = _records(rows)
    if not records:
        return [], 0
    if data_cfg.mc_format == "loglik" and task_type == "causal_lm":  # no eos: the scorer has none
        if every_option:
            return _option_examples(row_options(records, tokenizer), data_cfg.max_length)
        return _causal_examples(gold_options(records, tokenizer), data_cfg.max_length)
    prompts = [template.prompt(row) for row in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=not template.has_special_tokens)["input_ids"]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ReftError(
                f"row {i}: the prompt tokenizes to no tokens; check data.template and the row's "
                "prompt column"
            )
    if task_type == "seq_cls":
        targets = example_labels(records, data_cfg, label_names, num_labels)
        kept = [
            Example(i, ids, len(ids), label=label)
            for i, (ids, label) in enumerate(zip(prompt_ids, targets, strict=True))
            if len(ids) <= data_cfg.max_length
        ]
        return kept, len(records) - len(kept)
    if tokenizer.eos_token_id is None:
        raise ReftError("the tokenizer has no eos token; causal LM training needs one to stop")
    responses = []
    for number, row in enumerate(records):
        text = template.response(row)
        if text is None:
            if any(
                name in row for name in RESPONSE_COLUMNS
            ):  # the column is there, this row's is null
                raise ReftError(
                    f"row {number} of the data has no response (null); fill or drop that row"
                )
            raise missing_column(RESPONSE_COLUMNS, "response", list(row))
        responses.append(text)
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    pairs = [(p, [*r, eos]) for p, r in zip(prompt_ids, response_ids, strict=True)]
    return _causal_examples(pairs, data_cfg.max_length)


def _causal_examples(
    pairs: Sequence[tuple[list[int], list[int]]], max_length: int
) -> tuple[list[Example], int]:
    """(prompt ids, response ids) pairs as examples, loss on the response; drops over-long ones."""
    examples = []
    for i, (prompt, response) in enumerate(pairs):
        if len(prompt) + len(response) > max_length:
            continue
        labels = [IGNORE_INDEX] * len(prompt) + response
        examples.append(Example(i, prompt + response, len(prompt), labels=labels))
    return examples, len(pairs) - len(examples)


def _option_examples(options: Sequence[Option], max_length: int) -> tuple[list[Example], int]:
    """Every option as an example of its row; a row with an over-long option is dropped whole,
    so each kept row is scored on all its options."""
    too_long = {o.row for o in options if len(o.context) + len(o.continuation) > max_length}
    examples = [
        Example(
            o.row,
            o.context + o.continuation,
            len(o.context),
            labels=[IGNORE_INDEX] * len(o.context) + o.continuation,
            choice=(o.index, o.gold),
        )
        for o in options
        if o.row not in too_long
    ]
    return examples, len(too_long)


# ---------------------------------------------------------------------------- splitting, loading


def split_train_eval(
    examples: Sequence[Example], val_size: int | float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out `val_size` examples (a count, or a fraction in (0, 1)) chosen with `seed`.

    Both parts keep the original order; shuffling for training is the loader's job.
    """
    if not isinstance(val_size, int) and not 0 < val_size < 1:
        raise ReftError(f"data.val_size {val_size} must be a fraction in (0, 1) or a row count")
    count = val_size if isinstance(val_size, int) else max(round(len(examples) * val_size), 1)
    if count < 1:
        raise ReftError(f"data.val_size {val_size} must be at least 1 row")
    if count >= len(examples):
        raise ReftError(
            f"data.val_size {val_size} holds out {count} of {len(examples)} examples, leaving "
            "none to train on; lower it"
        )
    held = set(random.Random(seed).sample(range(len(examples)), count))
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


def load_data(
    data_cfg: DataConfig,
    task_type: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    num_labels: int | None = None,
    seed: int = 42,
) -> LoadedData:
    """The train (and eval) examples data_cfg describes.

    Eval comes from data.eval_dataset/eval_split (eval_split alone: another split of the training
    dataset; eval_dataset alone: its 'validation' split; `selection of validation`: the paper's
    model-selection half of it, splits.py) or, with data.val_size, from a seeded hold-out of the
    training examples. max_samples keeps the first N training rows.
    """
    if data_cfg.dataset is None:
        raise ReftError("data.dataset is not set; name a hub dataset or a local data file")
    separate_eval = data_cfg.eval_dataset is not None or data_cfg.eval_split is not None
    if separate_eval and data_cfg.val_size is not None:
        raise ReftError(
            "set data.val_size or data.eval_dataset/eval_split, not both: each defines the eval set"
        )
    template = make_template(data_cfg, tokenizer)
    rows = load_rows(data_cfg.dataset, data_cfg.dataset_config, data_cfg.split)
    if data_cfg.max_samples is not None and data_cfg.max_samples < len(rows):
        rows = rows.select(range(data_cfg.max_samples))
    names = label_names_of(rows, data_cfg) if task_type == "seq_cls" else None
    build = dict(label_names=names, num_labels=num_labels)
    train, dropped = build_examples(rows, data_cfg, task_type, tokenizer, template, **build)
    if not train:
        raise ReftError(
            f"every training example is longer than data.max_length={data_cfg.max_length}; raise it"
        )
    evals, dropped_eval = None, 0
    if separate_eval:
        source = data_cfg.eval_dataset or data_cfg.dataset
        config = data_cfg.dataset_config if data_cfg.eval_dataset is None else None
        eval_rows = _eval_rows(source, config, data_cfg.eval_split or "validation", seed)
        evals, dropped_eval = build_examples(
            eval_rows, data_cfg, task_type, tokenizer, template, **build, every_option=True
        )
    elif data_cfg.val_size is not None:
        train, evals = split_train_eval(train, data_cfg.val_size, seed)
    return LoadedData(
        train=train,
        eval=evals,
        dropped_train=dropped,
        dropped_eval=dropped_eval,
        label_names=names,
        num_labels=_num_labels(train, names, num_labels) if task_type == "seq_cls" else None,
        template=template.spec,
    )


def _eval_rows(source: str, config: str | None, split: str, seed: int) -> datasets.Dataset:
    """The eval split; `selection of validation` keeps the paper's model-selection half of it."""
    spec = half_spec(split)
    if spec is None:  # passed as written: hub datasets read their own slice syntax
        return load_rows(source, config, split)
    return take_split(load_rows(source, config, spec.name), spec, seed)


def _num_labels(train: Sequence[Example], names: Sequence[str] | None, given: int | None) -> int:
    if given is not None:
        return given
    if names is not None:
        return len(names)
    return max(int(ex.label or 0) for ex in train) + 1


# ---------------------------------------------------------------------------- batching


def collate(examples: Sequence[Example], pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """A right-padded batch in the names ReftModel.forward takes (plus example_ids)."""
    if pad_token_id is None:
        raise ReftError("the tokenizer has no pad token; set one (for example its eos token)")
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        input_ids[row, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        attention_mask[row, : len(ex.input_ids)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "prompt_lengths": torch.tensor([ex.prompt_length for ex in examples], dtype=torch.long),
        "example_ids": torch.tensor([ex.example_id for ex in examples], dtype=torch.long),
    }
    if all(ex.labels is not None for ex in examples):
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, ex in enumerate(examples):
            labels[row, : len(ex.labels)] = torch.tensor(ex.labels)
        batch["labels"] = labels
    elif all(ex.label is not None for ex in examples):
        regression = any(isinstance(ex.label, float) for ex in examples)
        batch["labels"] = torch.tensor(
            [ex.label for ex in examples], dtype=torch.float if regression else torch.long
        )
    return batch


def left_padded(rows: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Token rows padded on the left, so every row's generated tokens start at the same column."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
