"""The training config: a typed schema in sections, read from YAML with `key=value` overrides.

One dataclass per section (`model`, `data`, `intervention`, `lora`, `train`, `eval`, `generate`)
under `RunConfig`, beside the top-level `method` (reft, or the lora baseline). `train` uses transformers' TrainingArguments names so its settings read the same as in
any HF recipe. Defaults follow the LoReFT paper (lr 9e-4, no warmup, linear schedule, no weight
decay, max length 512, batch 8). Validation is generic (config_validation.py): every problem is
collected and reported together, each with its key path, the value and what was expected.

config/reader.py reads it from YAML.
"""

from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from transformers.activations import ACT2FN

from reft_cli.config.splits import half_spec
from reft_cli.config.validation import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    UNIT_INTERVAL,
    ConfigError,
    build,
    did_you_mean,
    one_of,
    option,
    render_problems,
    rule,
)
from reft_cli.engine.adapter_config import COMPONENTS, TASK_TYPES, ReftConfig
from reft_cli.engine.base_models import DTYPES
from reft_cli.engine.interventions import INTERVENTIONS
from reft_cli.engine.pooling import POOLINGS
from reft_cli.engine.positions import PositionSpec
from reft_cli.errors import ReftError

__all__ = [
    "MC_FORMATS",
    "NAMED_TEMPLATES",
    "SCORINGS",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "InterventionSection",
    "LoraSection",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "render_problems",
]

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
NAMED_TEMPLATES = ("alpaca", "chat", "commonsense", "gsm8k")
SCORINGS = ("generate", "loglik")
"""How `reft eval` scores: generated answers, or each answer option's log-likelihood."""
MC_FORMATS = ("loglik",)
"""How multiple-choice rows become training examples (data.mc_format): loglik, as its scorer."""
"""Prompt formats known by name; any other template is a format string with {field} placeholders."""

_LAYERS_EXPECTED = "all, a layer number, a list like [2, 10] or a string like '2;10'"
_POSITIONS_EXPECTED = "f<N>, l<N> or f<N>+l<M> (first/last N prompt tokens), for example f7+l7"
_TEMPLATE_EXPECTED = (
    f"{', '.join(NAMED_TEMPLATES)}, or a format string with named placeholders like '{{prompt}}'"
)


_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_VAL_SIZE_EXPECTED = "a fraction between 0 and 1 (exclusive) or a positive number of rows"
_EVAL_SPLIT_EXPECTED = "a split name (validation, validation[:500]) or selection of SPLIT"


def _val_size_ok(size: int | float) -> bool:
    """An int counts held-out rows; a float is the held-out fraction."""
    return size >= 1 if isinstance(size, int) else 0 < size < 1


def _eval_split_ok(split: str) -> bool:
    """A split name, or `selection of SPLIT`: the paper's model-selection half (splits.py)."""
    try:
        half_spec(split)
    except ReftError:
        return False
    return True


def _layers_ok(layers: str | int | list[int]) -> bool:
    """The shape of `layers`; the range is checked against the model in `reft_config`."""
    if isinstance(layers, str):
        parts = [p.strip() for p in layers.replace(",", ";").split(";") if p.strip()]
        return layers == "all" or (bool(parts) and all(p.isdigit() for p in parts))
    chosen = layers if isinstance(layers, list) else [layers]
    return bool(chosen) and all(x >= 0 for x in chosen)


def _positions_ok(text: str) -> bool:
    try:
        PositionSpec.parse(text)
    except ReftError:
        return False
    return True


def _template_ok(template: str) -> bool:
    if template in NAMED_TEMPLATES:
        return True
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:  # unbalanced braces
        return False
    return bool(names) and all(name.isidentifier() for name in names)


def _activation(name: str) -> str | None:
    if name in ACT2FN:
        return None
    return "a transformers activation such as relu, gelu, silu or tanh" + did_you_mean(name, ACT2FN)


@dataclass(frozen=True)
class ModelConfig:
    """The frozen base model: a hub id, a local folder, or an embedded model name."""

    name_or_path: str = option("smollm2-135m-instruct")
    revision: str | None = option(None)
    dtype: str = option("float32", one_of(DTYPES))
    # null: one device (training: accelerate's; eval/generate: --device). auto, balanced or
    # sequential: accelerate spreads a model too large for one GPU over all of them
    device_map: str | None = option(None, one_of(DEVICE_MAPS))
    trust_remote_code: bool = option(False)  # never run a repository's code unless asked
    task_type: str = option("causal_lm", one_of(TASK_TYPES))
    num_labels: int | None = option(None, POSITIVE_INT)  # seq_cls; null: from the data's labels
    # seq_cls: what the head reads; mean suits sentence-transformers encoders (engine/pooling.py)
    pooling: str = option("first", one_of(POOLINGS))


@dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how a row becomes a prompt (and response)."""

    # a hub id, a json/jsonl/csv/parquet file, or a folder written by save_to_disk
    dataset: str | None = option(None)
    dataset_config: str | None = option(None)
    split: str = option("train")
    eval_dataset: str | None = option(None)
    eval_split: str | None = option(None, rule(_eval_split_ok, _EVAL_SPLIT_EXPECTED))
    # role (prompt, response, input, label) -> column name
    columns: dict[str, str] = option({})  # noqa: RUF009 - option() returns a field
    template: str = option("{prompt}", rule(_template_ok, _TEMPLATE_EXPECTED))
    max_length: int = option(512, POSITIVE_INT)
    max_samples: int | None = option(None, POSITIVE_INT)
    val_size: int | float | None = option(None, rule(_val_size_ok, _VAL_SIZE_EXPECTED))
    system_prompt: str | None = option(None)
    # loglik: multiple-choice rows (contexts, continuations, gold_index) train on the gold
    # option's context and continuation exactly as `reft eval --scoring loglik` scores them
    mc_format: str | None = option(None, one_of(MC_FORMATS))


@dataclass(frozen=True)
class InterventionSection:
    """What is trained: the same intervention at each chosen layer, on the chosen prompt tokens."""

    type: str = option("loreft", one_of(lambda: INTERVENTIONS))
    layers: str | int | list[int] = option(  # noqa: RUF009 - option() returns a field
        "all", rule(_layers_ok, _LAYERS_EXPECTED), expected=_LAYERS_EXPECTED
    )
    component: str = option("block_output", one_of(COMPONENTS))
    rank: int = option(4, POSITIVE_INT)
    positions: str = option("f7+l7", rule(_positions_ok, _POSITIONS_EXPECTED))
    share_weights: bool = option(True)
    dropout: float = option(0.0, rule(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    act_fn: str | None = option(None, _activation)
    add_bias: bool = option(False)


METHODS = ("reft", "lora", "probe")
"""What `reft train` trains: ReFT interventions, the LoRA baseline through PEFT, or (classifiers)
the head alone on the frozen model, a linear probe."""

_TARGETS_EXPECTED = "null (PEFT's default for the model family), all-linear, or module names"


def _targets_ok(targets: str | list[str]) -> bool:
    """`all-linear`, a list of module names, or a comma-separated string of them."""
    if targets == "all-linear":
        return True
    names = targets.split(",") if isinstance(targets, str) else targets
    return bool(names) and all(_MODULE_NAME.fullmatch(name.strip()) for name in names)


@dataclass(frozen=True)
class LoraSection:
    """The LoRA baseline (method: lora), in PEFT's LoraConfig terms; biases stay frozen."""

    r: int = option(8, POSITIVE_INT)
    alpha: int = option(16, POSITIVE_INT)
    dropout: float = option(0.0, rule(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    target_modules: str | list[str] | None = option(  # noqa: RUF009 - option() returns a field
        None, rule(_targets_ok, _TARGETS_EXPECTED), expected=_TARGETS_EXPECTED
    )

    def target_list(self) -> str | list[str] | None:
        """What PEFT's LoraConfig takes: None, "all-linear", or a list of module names."""
        if self.target_modules is None or self.target_modules == "all-linear":
            return self.target_modules
        names = self.target_modules
        if isinstance(names, str):
            names = names.split(",")
        return [name.strip() for name in names]


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop, in TrainingArguments' names."""

    learning_rate: float = option(9e-4, POSITIVE)
    num_train_epochs: float = option(3.0, POSITIVE)
    max_steps: int = option(-1, rule(lambda v: v == -1 or v >= 1, "-1 (off) or a positive integer"))
    per_device_train_batch_size: int = option(8, POSITIVE_INT)
    per_device_eval_batch_size: int = option(8, POSITIVE_INT)
    gradient_accumulation_steps: int = option(1, POSITIVE_INT)
    warmup_ratio: float = option(0.0, UNIT_INTERVAL)
    weight_decay: float = option(0.0, NON_NEGATIVE)
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = option("linear")
    max_grad_norm: float = option(1.0, POSITIVE)
    seed: int = option(42, NON_NEGATIVE)
    output_dir: str = option("out/run")
    overwrite_output_dir: bool = option(False)
    logging_steps: int = option(10, POSITIVE_INT)
    save_steps: int = option(500, POSITIVE_INT)
    save_total_limit: int | None = option(None, POSITIVE_INT)
    eval_steps: int | None = option(None, POSITIVE_INT)  # null: evaluate once per epoch
    bf16: bool = option(False)
    fp16: bool = option(False)
    gradient_checkpointing: bool = option(False)
    resume_from_checkpoint: str | None = option(None)  # a checkpoint folder, or "latest"
    report_to: Literal["none", "tensorboard", "wandb"] = option("none")
    # Speed-ups that keep the losses and gradients of the plain path (false turns one off for
    # debugging): reuse the frozen prefix (tokens before the first intervened position) and the
    # input to the lowest intervened layer across epochs, in RAM then on disk within budgets; run
    # the lm head on response positions only, fused with the loss in chunks of positions; group a
    # step's rows by length into micro-batches.
    cache_frozen_prefix: bool = option(True)
    cache_frozen_layers: bool = option(True)
    frozen_cache_budget_mb: int = option(2048, NON_NEGATIVE)
    frozen_cache_disk_mb: int = option(0, NON_NEGATIVE)
    lm_head_on_targets: bool = option(True)
    fused_head_loss: bool = option(True)
    group_by_length: bool = option(True)
    # Rows of a micro-batch as one sequence without pad tokens (auto: where the first batch shows
    # it matches padding; true: an error where it does not).
    packing: bool | Literal["auto"] = option("auto")
    metric_for_best_model: str | None = option(None)
    greater_is_better: bool | None = option(None)

    def conflicts(self) -> list[str]:
        if self.bf16 and self.fp16:
            return ["train.bf16 and train.fp16 are both true; choose at most one mixed precision"]
        return []


@dataclass(frozen=True)
class EvalConfig:
    """Which benchmarks `reft eval` scores, and how much of each."""

    tasks: list[str] = option([])  # noqa: RUF009 - option() returns a field
    batch_size: int = option(16, POSITIVE_INT)
    max_new_tokens: int | None = option(None, POSITIVE_INT)  # null: each task's paper default
    limit: int | None = option(None, POSITIVE_INT)
    split: str = option("test")
    scoring: str = option("generate", one_of(SCORINGS))


@dataclass(frozen=True)
class GenerateConfig:
    """Decoding settings, in transformers' GenerationConfig names: the config's `generate` section,
    `reft generate`'s options and the Python API's one type."""

    max_new_tokens: int = option(256, POSITIVE_INT)
    temperature: float = option(1.0, NON_NEGATIVE)
    top_p: float = option(1.0, rule(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    top_k: int = option(50, NON_NEGATIVE)
    num_beams: int = option(1, POSITIVE_INT)
    num_return_sequences: int = option(1, POSITIVE_INT)
    do_sample: bool = option(False)
    repetition_penalty: float = option(1.0, POSITIVE)
    seed: int | None = option(None, NON_NEGATIVE)
    batch_size: int = option(8, POSITIVE_INT)  # prompts per forward pass

    def conflicts(self) -> list[str]:
        problems = []
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            problems.append(
                f"generate.num_return_sequences: {self.num_return_sequences} answers per prompt "
                "need sampling (do_sample: true) or at least as many beams (num_beams)"
            )
        if self.do_sample and self.temperature == 0:
            problems.append(
                "generate.temperature: 0 means greedy decoding; give a temperature above 0 to "
                "sample, or turn do_sample off"
            )
        return problems

    def updated(self, changes: dict[str, Any], source: str = "the options") -> GenerateConfig:
        """These settings with `changes` (None values skipped), validated like a config section."""
        data = dataclasses.asdict(self)
        data.update({k: v for k, v in changes.items() if v is not None})
        problems: list[str] = []
        built = build(GenerateConfig, data, "generate", problems)
        if problems:
            raise ConfigError(problems, source)
        return built

    def kwargs(self, pad_token_id: int | None) -> dict[str, Any]:
        """What transformers' generate takes; sampling knobs only when sampling."""
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "num_return_sequences": self.num_return_sequences,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "pad_token_id": pad_token_id,
        }
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return out


@dataclass(frozen=True)
class RunConfig:
    """A whole run: every section, fully resolved (what training_config.yaml records)."""

    # lora, probe: the `intervention` section is unused
    method: str = option("reft", one_of(METHODS))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    intervention: InterventionSection = dataclasses.field(default_factory=InterventionSection)
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    generate: GenerateConfig = dataclasses.field(default_factory=GenerateConfig)

    def conflicts(self) -> list[str]:
        problems = []
        if self.method == "probe" and self.model.task_type != "seq_cls":
            problems.append(
                "method: probe trains a classification head; set model.task_type: seq_cls"
            )
        if self.data.mc_format is not None and self.model.task_type != "causal_lm":
            problems.append(
                f"data.mc_format: {self.data.mc_format} trains a causal LM on answer options; "
                "set model.task_type: causal_lm or drop data.mc_format"
            )
        if self.model.pooling != "first" and self.model.task_type != "seq_cls":
            problems.append(
                f"model.pooling: {self.model.pooling} is what a classification head reads; "
                "set model.task_type: seq_cls or drop model.pooling"
            )
        return problems

    @classmethod
    def from_dict(cls, data: Any, source: str = "the config") -> RunConfig:
        """Validate a dict as read from YAML; raises ConfigError with every problem found."""
        problems: list[str] = []
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                [f"the top level must be a mapping of sections, not {_show_type(data)}"], source
            )
        config = build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems, source)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def reft_config(self, num_layers: int) -> ReftConfig:
        """The engine's adapter config for a model with `num_layers` layers."""
        iv, model = self.intervention, self.model
        try:
            return ReftConfig.for_layers(
                iv.layers,
                num_layers,
                type=iv.type,
                component=iv.component,
                rank=iv.rank,
                dropout=iv.dropout,
                act_fn=iv.act_fn,
                add_bias=iv.add_bias,
                positions=iv.positions,
                share_weights=iv.share_weights,
                base_model=model.name_or_path,
                base_model_revision=model.revision,
                task_type=model.task_type,
                pooling=model.pooling,
                dtype=model.dtype,
                prompt_template=self.data.template,
            )
        except ReftError as err:
            raise ReftError(f"intervention.layers: {err}") from err


def _show_type(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}"
