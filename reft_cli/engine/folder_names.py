"""The names of the files in adapter, run, eval and reproduce folders, in one place.

Every layer reads or writes these folders, so the names live in the lowest layer and nothing else
spells them. They are part of the on-disk format: adapters saved before must load after, so a name
here never changes.

    out/run/                      # `reft train`'s output: a ReFT or a LoRA adapter
      reft_config.json            # CONFIG_NAME: a ReFT adapter's record (written last)
      reft_model.safetensors      # WEIGHTS_NAME: intervention weights (+ classification head)
      reft_lora.json              # LORA_CONFIG_NAME: a LoRA adapter's record (written last)
      adapter_config.json         # PEFT_CONFIG_NAME: PEFT's own LoRA config
      adapter_model.safetensors   # PEFT_WEIGHTS_NAME: PEFT's own LoRA weights
      training_config.yaml        # TRAINING_CONFIG_NAME: the fully resolved config of the run
      trainer_log.jsonl           # LOG_NAME: one JSON line per logged step / eval
      loss_curve.png              # PLOT_NAME
      README.md                   # CARD_NAME: the model card
      .reft.lock                  # LOCK_NAME: held by the run writing here (filelock)
      .checkpoint-<step>.*.tmp/   # STAGING_PATTERN: a checkpoint being written (staged_dir)
      checkpoint-<step>/          # checkpoint_name(step): the adapter files plus
        optimizer.safetensors     #   OPTIMIZER_NAME
        rng.safetensors           #   RNG_NAME
        training_state.json       #   TRAINING_STATE_NAME
      eval/                       # EVAL_DIR: where `reft eval` writes for an adapter
        eval_results.json         # RESULTS_NAME
        alpaca_eval.json          # ALPACA_EVAL_NAME: alpaca_eval's model-outputs format
        predictions/<task>.jsonl  # PREDICTIONS_DIR, predictions_name(task)

    <recipe output>/              # `reft reproduce`
      recipe.json                 # RECIPE_RECORD_NAME
      report.md                   # REPORT_MARKDOWN_NAME
      report.json                 # REPORT_JSON_NAME
      report.png                  # REPORT_PLOT_NAME
      <run>/seed<seed>/
        run.json                  # RUN_RECORD_NAME
        train.json                # TRAIN_DONE_NAME: written once training finished
        adapter/                  # ADAPTER_DIR: a run folder as above
        eval/eval_results.json    # EVAL_DIR / RESULTS_NAME
"""

from __future__ import annotations

import re

CONFIG_NAME = "reft_config.json"
WEIGHTS_NAME = "reft_model.safetensors"
LORA_CONFIG_NAME = "reft_lora.json"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_MARKERS = (CONFIG_NAME, LORA_CONFIG_NAME)
"""A folder holding either file is an adapter (each is written last, after the weights)."""

TRAINING_CONFIG_NAME = "training_config.yaml"
LOG_NAME = "trainer_log.jsonl"
PLOT_NAME = "loss_curve.png"
CARD_NAME = "README.md"

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
STAGING_PATTERN = re.compile(r"\.checkpoint-\d+\.[^/]+\.tmp")
"""A checkpoint folder staged by staged_dir: `.checkpoint-<step>.<random>.tmp`, renamed when done."""
LOCK_NAME = ".reft.lock"
"""The lock file a training run holds for its whole duration, so two runs never share a folder."""
OPTIMIZER_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
TRAINING_STATE_NAME = "training_state.json"

EVAL_DIR = "eval"
RESULTS_NAME = "eval_results.json"
ALPACA_EVAL_NAME = "alpaca_eval.json"
PREDICTIONS_DIR = "predictions"

RECIPE_RECORD_NAME = "recipe.json"
REPORT_MARKDOWN_NAME = "report.md"
REPORT_JSON_NAME = "report.json"
REPORT_PLOT_NAME = "report.png"
RUN_RECORD_NAME = "run.json"
TRAIN_DONE_NAME = "train.json"
ADAPTER_DIR = "adapter"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after optimizer step `step` (CHECKPOINT_PATTERN reads it)."""
    return f"checkpoint-{step}"


def predictions_name(task: str) -> str:
    """The file in PREDICTIONS_DIR that holds one task's predictions."""
    return f"{task}.jsonl"
