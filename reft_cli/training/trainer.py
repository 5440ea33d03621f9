"""`reft train`: build the model and data from a RunConfig, then run the optimisation loop.

A step reads top to bottom: take this process's rows of the step's micro-batches, count the step's
targets across processes, forward and backward each micro-batch with its loss divided by that count,
clip, step, log, evaluate, checkpoint. Gradients therefore equal those of one padded batch over the
whole global step, on any number of processes. The loss stays on the device and is read back only
at logging steps, before a checkpoint and at the end (device_io.py), so a step never waits for it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    gather_object,
    is_tensorboard_available,
    is_wandb_available,
)
from rich.console import Console
from transformers import get_scheduler

from reft_cli.config.schema import RunConfig
from reft_cli.data.examples import IGNORE_INDEX, collate
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.folder_names import LOG_NAME, PLOT_NAME, TRAINING_CONFIG_NAME, checkpoint_name
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from reft_cli.training.device_io import LossWatch, to_device
from reft_cli.training.fused_head import FusedHead
from reft_cli.training.guards import (
    RunLock,
    StopSignals,
    check_weights,
    last_checkpoint,
    take_output_dir,
)
from reft_cli.training.loss import forward, loss_sum, takes_logits_to_keep
from reft_cli.training.model_card import write_lora_card, write_model_card
from reft_cli.training.packing import Packer, key_budget
from reft_cli.training.prefix_cache import PrefixCache
from reft_cli.training.reporting import (
    RunSummary,
    TrainerLog,
    flat_config,
    plot_losses,
    progress_bar,
    progress_line,
)
from reft_cli.training.run_dir import (
    check_output_dir,
    prune_checkpoints,
    resolve_checkpoint,
    start_output_dir,
    write_checkpoint,
)
from reft_cli.training.setup import build
from reft_cli.training.step_plan import (
    group_by_length,
    plan_epoch,
    split_by_keys,
    steps_per_epoch,
)
from reft_cli.training.train_state import (
    Progress,
    capture_rng,
    load_training_state,
    save_training_state,
)
from reft_cli.training.validation import evaluate

if TYPE_CHECKING:
    pass


class Trainer:
    """One training run: owns the accelerator, optimizer, schedule, progress and output folder."""

    def __init__(
        self,
        run: RunConfig,
        console: Console,
        on_eval: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        """`on_eval(step, metrics)` sees every evaluation; an exception it raises (a sweep's
        pruned trial) stops the run there, its folder released."""
        self.run, self.cfg, self.console = run, run.train, console
        self.on_eval = on_eval
        self.start = time.perf_counter()
        self.output_dir = Path(self.cfg.output_dir)
        # accelerate keeps mixed precision in a process-wide singleton; a second run in the same
        # process (the Python API, tests) may ask for another, so start from a clean state. The
        # distributed setup (PartialState) is kept.
        AcceleratorState._reset_state()
        _check_tracker(self.cfg.report_to)
        self.accelerator = Accelerator(
            # cpu=True is what makes accelerate set up gloo for a CPU-only torchrun launch.
            cpu=not torch.cuda.is_available(),
            mixed_precision="bf16" if self.cfg.bf16 else "fp16" if self.cfg.fp16 else "no",
            log_with=None if self.cfg.report_to == "none" else self.cfg.report_to,
            project_dir=self.output_dir,
        )
        self.main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.lock, self.stops = RunLock(self.output_dir), StopSignals()
        take_output_dir(self.lock, self.output_dir, self.main, self.world)
        try:
            self._build()
        except BaseException:
            self.lock.release()
            raise

    def _build(self) -> None:
        run, resume = self.run, self.cfg.resume_from_checkpoint
        self.resume = resolve_checkpoint(self.output_dir, resume) if resume else None
        check_output_dir(self.output_dir, self.cfg.overwrite_output_dir, self.resume is not None)
        self.setup = build(run)
        self.model, self.data = self.setup.model, self.setup.data
        if self.cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            self.params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        self.global_batch = self.cfg.per_device_train_batch_size * self.world
        self.per_epoch = steps_per_epoch(
            len(self.data.train), self.global_batch, self.cfg.gradient_accumulation_steps
        )
        self.total_steps = (
            self.cfg.max_steps
            if self.cfg.max_steps > 0
            else math.ceil(self.cfg.num_train_epochs * self.per_epoch)
        )
        self.scheduler = get_scheduler(
            "constant_with_warmup"
            if self.cfg.lr_scheduler_type == "constant"
            else self.cfg.lr_scheduler_type,
            optimizer,
            num_warmup_steps=math.ceil(self.cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.wrapped, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        cfg = self.cfg
        self.head_on_targets = cfg.lm_head_on_targets and takes_logits_to_keep(self.model.model)
        self.packer = self._packer()
        # The head held back in training steps and run fused with the loss (fused_head.py).
        self.fused_head = self._fused_head(run)
        # LoRA changes the computation at every position, so it leaves no prefix frozen.
        cache = run.method == "reft" and (cfg.cache_frozen_prefix or cfg.cache_frozen_layers)
        self.prefix_cache = (
            PrefixCache(
                self.model,
                cfg.frozen_cache_budget_mb * 2**20,
                prefix=cfg.cache_frozen_prefix,
                layers=cfg.cache_frozen_layers,
                head_on_targets=self.head_on_targets,
                disk_bytes=cfg.frozen_cache_disk_mb * 2**20,
                disk_dir=self.output_dir,
                packer=self.packer,
            )
            if cache and PrefixCache.applies(self.model, run.model.task_type)
            else None
        )
        # Packed rows attend through one dense mask: a step splits its rows into groups of at
        # most this many keys, run one after another (the loss is normalized over the step).
        self.key_budget = key_budget(self.model) if self.packer is not None else 0
        if self.main:
            start_output_dir(self.output_dir, resuming=self.resume is not None)
        self.accelerator.wait_for_everyone()
        self.progress = Progress()
        if self.resume is not None:
            self.model.load_adapter_weights(self.resume / self.model.weights_name)
            self.progress = load_training_state(
                self.resume,
                self.optimizer,
                self.scheduler,
                self.accelerator.process_index,
                self.accelerator.num_processes,
            )
        self.resumed_at = self.progress.global_step  # steps done before this process started
        self.log = TrainerLog(
            self.output_dir / LOG_NAME,
            keep_until_step=self.progress.global_step if self.resume else None,
        )
        self.metric = self.cfg.metric_for_best_model or "eval_loss"
        if not self.metric.startswith("eval_"):
            self.metric = f"eval_{self.metric}"
        self.greater = (
            self.cfg.greater_is_better
            if self.cfg.greater_is_better is not None
            else not self.metric.endswith("loss")
        )
        self.last_loss: float | None = None
        self.step_rng: dict[str, Any] | None = None  # set while a step runs
        self.watch = LossWatch(self.accelerator.device)

    # ----------------------------------------------------------------------------- the loop
    def train(self) -> RunSummary:
        """Run to the end (or to Ctrl-C/SIGTERM, which save a checkpoint), then release the folder."""
        try:
            with self.stops.active():
                self._loop()
                return self._finish()
        finally:
            self.lock.release()

    def _loop(self) -> None:
        if self.main:
            atomic_write_text(self.output_dir / TRAINING_CONFIG_NAME, self.run.dump_yaml())
            self._warn_dropped()
        if self.cfg.report_to != "none":
            self.accelerator.init_trackers("reft", config=flat_config(self.run.to_dict()))
        self.model.train()
        self.loop_start = time.perf_counter()
        # Without a terminal the progress lines say it all; a live bar would only print its last frame.
        bar = progress_bar(self.console, disable=not (self.main and self.console.is_terminal))
        try:
            with bar:
                task = bar.add_task(
                    "train",
                    total=self.total_steps,
                    completed=self.progress.global_step,
                    epoch="0",
                    loss="—",
                    lr="—",
                    speed="—",
                )
                while self.progress.global_step < self.total_steps:
                    self._epoch(lambda fields: bar.update(task, advance=1, **fields))
        except KeyboardInterrupt:
            # a stop mid-step saves the state from before that step; the step runs again on resume
            self._save_checkpoint(self.step_rng)
            self.console.print(
                f"[yellow]interrupted[/]: saved {checkpoint_name(self.progress.global_step)} in "
                f"{self.output_dir}; continue with train.resume_from_checkpoint=latest"
            )
            raise

    def _epoch(self, update) -> None:
        progress, cfg = self.progress, self.cfg
        plan = plan_epoch(
            len(self.data.train),
            self.global_batch,
            cfg.gradient_accumulation_steps,
            cfg.seed,
            progress.epoch,
        )
        while progress.step_in_epoch < len(plan.steps) and progress.global_step < self.total_steps:
            step_start = time.perf_counter()
            self.step_rng = capture_rng()  # what a checkpoint of this boundary holds (host copies)
            shards = plan.shard(progress.step_in_epoch, self.accelerator.process_index, self.world)
            if cfg.group_by_length:
                shards = group_by_length(shards, self._step_lengths(shards))
            if self.key_budget:
                keys = {r: len(self.data.train[r].input_ids) for rows in shards for r in rows}
                shards = self._by_keys(shards, keys)
            loss = self._step([self._batch(rows) for rows in shards if rows])
            self.watch.record(loss, progress.global_step)
            epoch = progress.epoch + progress.step_in_epoch / len(plan.steps)
            lr = self.scheduler.get_last_lr()[0]
            now = time.perf_counter()
            fields = {
                "epoch": f"{epoch:.2f}",
                "lr": f"{lr:.2e}",
                "speed": f"{1 / max(now - step_start, 1e-9):.2f}",
            }
            last = progress.global_step == self.total_steps
            logging = progress.global_step % cfg.logging_steps == 0 or last
            if logging:  # the only place a step's loss is read back to the host
                self.last_loss = self._checked_loss()
                fields["loss"] = f"{self.last_loss:.4f}"
            update(fields)
            if logging:
                entry = {"step": progress.global_step, "epoch": round(epoch, 4)}
                self._log({**entry, "loss": self.last_loss, "lr": lr})
            end_of_epoch = progress.step_in_epoch == len(plan.steps)
            saved = False
            if self.data.eval and (
                (cfg.eval_steps and progress.global_step % cfg.eval_steps == 0)
                or (not cfg.eval_steps and end_of_epoch)
                or last
            ):
                saved = self._evaluate_and_select()
            if not saved and progress.global_step % cfg.save_steps == 0:
                self._save_checkpoint()
        if progress.step_in_epoch >= len(plan.steps):
            progress.epoch += 1
            progress.step_in_epoch = 0

    def _step_lengths(self, shards: list[list[int]]) -> dict[int, int]:
        """How many positions a step runs for each of these rows (the cache skips a prefix)."""
        rows = [r for micro in shards for r in micro]
        examples = [self.data.train[r] for r in rows]
        lengths = torch.tensor([len(ex.input_ids) for ex in examples])
        if self.prefix_cache is not None and rows:
            prompts = torch.tensor([ex.prompt_length for ex in examples])
            lengths = self.prefix_cache.step_lengths(prompts, lengths)
        return dict(zip(rows, lengths.tolist(), strict=True))

    def _batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        batch = collate([self.data.train[i] for i in rows], self.setup.tokenizer.pad_token_id)
        return to_device(batch, self.accelerator.device)

    def _step(self, micro: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Forward and backward the step's micro-batches, then update and count the step; returns
        the step's mean loss as a device tensor, unread (LossWatch reads it at logging steps).

        A stop during forward/backward leaves the weights as they were before the step; one during
        the update waits until the step is counted, so checkpoints always fall on step boundaries.

        Each loss sum is divided by the number of targets in the whole global step, times the
        process count because data parallelism averages gradients across processes.
        """
        acc, task_type = self.accelerator, self.run.model.task_type
        local = sum(
            (_targets(b["labels"], task_type) for b in micro), torch.zeros((), device=acc.device)
        )
        count = acc.reduce(local.float(), "sum").clamp(min=1)
        total = torch.zeros((), device=acc.device)
        fused = self.fused_head
        for i, batch in enumerate(micro):
            sync = acc.no_sync(self.wrapped) if i < len(micro) - 1 else contextlib.nullcontext()
            head = fused.deferred() if fused else contextlib.nullcontext()
            with sync, acc.autocast(), head:
                if self.prefix_cache is not None:
                    outputs, targets = self.prefix_cache.forward(self.wrapped, batch)
                elif self.packer is not None:
                    outputs, targets = self.packer.forward(self.wrapped, batch)
                else:
                    outputs, targets = forward(self.wrapped, batch, task_type, self.head_on_targets)
                summed, _ = loss_sum(outputs, targets, task_type, fused)
            acc.backward(summed * self.world / count)
            total += summed.detach().float()
        with self.stops.deferred():
            if self.cfg.max_grad_norm:
                acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.progress.global_step += 1
            self.progress.step_in_epoch += 1
            self.step_rng = None  # the streams now stand at the next boundary
        return acc.reduce(total, "sum") / count

    def _fused_head(self, run) -> FusedHead | None:
        if not (self.cfg.fused_head_loss and run.model.task_type == "causal_lm"):
            return None
        with self.model.disable_adapter():
            head = FusedHead(self.model.model)
        return head if head.on else None

    def _by_keys(self, shards: list[list[int]], keys: dict[int, int]) -> list[list[int]]:
        """The step's micro-batches cut into groups of at most key_budget keys, one packed call
        each; where the cache runs a micro-batch's groups apart within one call, the micro-batches
        as planned (their rows in order, so dropout draws the plain path's masks)."""
        if self.prefix_cache is not None and self.prefix_cache.groups_rows:
            return shards
        return split_by_keys(shards, keys, self.key_budget)

    def _packer(self) -> Packer | None:
        """Packing for train.packing=auto|true: ReFT on a causal LM only (a classifier reads each
        row's own last token, LoRA's forward takes no intervention positions)."""
        setting, run = self.cfg.packing, self.run
        if setting is False:
            return None
        if run.method != "reft" or run.model.task_type != "causal_lm":
            if setting is True:
                raise ReftError(
                    "train.packing=true packs ReFT training of causal LMs only; "
                    f"this run is {run.method} {run.model.task_type}: set train.packing=auto"
                )
            return None
        return Packer(self.model, self.head_on_targets, required=setting is True)

    def _checked_loss(self) -> float | None:
        """The latest step's loss, read from the device; stops the run if any loss so far was not
        finite. Called before anything is logged or saved, so no checkpoint holds what followed."""
        loss, step, bad = self.watch.read()
        if step:
            where = last_checkpoint(self.output_dir, "the last good checkpoint")
            raise ReftError(
                f"the loss became {bad} at step {step}; {where}; "
                "lower train.learning_rate or check the data"
            )
        return loss

    # ----------------------------------------------------------------------------- side jobs
    def _log(self, entry: dict[str, Any]) -> None:
        if self.main:
            self.log.write(entry)
            if not self.console.is_terminal and "loss" in entry:
                elapsed = time.perf_counter() - self.loop_start
                line = progress_line(entry, self.total_steps, elapsed, self.resumed_at)
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        if self.cfg.report_to != "none":
            self.accelerator.log(entry, step=entry["step"])

    def _evaluate_and_select(self) -> bool:
        """Evaluate; save a checkpoint when the metric improves. True when one was saved."""
        self._checked_loss()
        metrics = evaluate(
            self.accelerator,
            self.wrapped,
            self.data.eval,
            self.setup.tokenizer,
            self.run,
            self.head_on_targets,
        )
        self.model.train()
        self._log({"step": self.progress.global_step, **metrics})
        value = metrics.get(self.metric)
        if value is None:
            raise ReftError(
                f"train.metric_for_best_model={self.cfg.metric_for_best_model!r} is not computed; "
                f"choose one of {', '.join(sorted(metrics))}"
            )
        if self.on_eval is not None:
            self.on_eval(self.progress.global_step, metrics)
        best = self.progress.best_metric
        if best is not None and not (value > best if self.greater else value < best):
            return False
        self.progress.best_metric = value
        self.progress.best_checkpoint = checkpoint_name(self.progress.global_step)
        self._save_checkpoint()
        return True

    def _save_checkpoint(self, rng: dict[str, Any] | None = None) -> None:
        """Save checkpoint-<step>; `rng` is the streams' state at this step boundary when they
        have moved on since (a stop mid-step), else they are captured now."""
        self._checked_loss()  # never a checkpoint of weights a non-finite loss has updated
        check_weights(self.params, self.output_dir, self.progress.global_step)
        rng_states = gather_object([rng or capture_rng()])  # every process's, to resume each
        if self.main:

            def fill(folder: Path) -> None:
                self.model.save_pretrained(folder)
                save_training_state(
                    folder, self.optimizer, self.scheduler, self.progress, rng_states
                )

            write_checkpoint(self.output_dir, self.progress.global_step, fill)
            best = self.progress.best_checkpoint
            prune_checkpoints(
                self.output_dir, self.cfg.save_total_limit, self.output_dir / best if best else None
            )
        self.accelerator.wait_for_everyone()

    def _warn_dropped(self) -> None:
        dropped = self.data.dropped_train + self.data.dropped_eval
        if dropped:
            self.console.print(
                f"[yellow]warning[/]: dropped {dropped} examples longer than "
                f"data.max_length={self.run.data.max_length} (never truncated); raise it to keep them"
            )

    def _finish(self) -> RunSummary:
        self._checked_loss()
        progress = self.progress
        if progress.best_checkpoint and self.cfg.metric_for_best_model:
            self.model.load_adapter_weights(
                self.output_dir / progress.best_checkpoint / self.model.weights_name
            )
        interventions, head, base = self.model.count_parameters()
        summary = RunSummary(
            seconds=time.perf_counter() - self.start,
            steps=progress.global_step,
            epochs=round(progress.epoch + progress.step_in_epoch / max(self.per_epoch, 1), 4),
            final_loss=self.last_loss,
            trainable_parameters=interventions,
            head_parameters=head,
            model_parameters=base,
            adapter_dir=self.output_dir,
            best_checkpoint=self.output_dir / progress.best_checkpoint
            if progress.best_checkpoint
            else None,
            best_metric=progress.best_metric,
        )
        if self.packer is not None and self.packer.note and self.main:
            self.console.print(self.packer.note)
        if self.prefix_cache is not None:
            if self.main:
                self.console.print(self.prefix_cache.describe())
            self.prefix_cache.store.clear()  # and its files, if it spilled to disk
        check_weights(self.params, self.output_dir, self.progress.global_step)
        if self.main:
            self.model.save_pretrained(self.output_dir)
            plot_losses(self.log.entries(), self.output_dir / PLOT_NAME)
            if isinstance(self.model, ReftModel):
                write_model_card(self.output_dir, self.run, self.model.reft_config, summary)
            else:
                write_lora_card(self.output_dir, self.run, self.model, summary)
        if self.cfg.report_to != "none":
            self.accelerator.end_training()
        self.accelerator.wait_for_everyone()
        return summary


def _check_tracker(report_to: str) -> None:
    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    if report_to in available and not available[report_to]():
        raise ReftError(f"train.report_to={report_to} needs its package: pip install {report_to}")


def _targets(labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """How many loss terms a micro-batch contributes: response tokens, or rows."""
    if task_type == "causal_lm":
        return labels[:, 1:].ne(IGNORE_INDEX).sum()
    return torch.tensor(labels.shape[0], device=labels.device)
