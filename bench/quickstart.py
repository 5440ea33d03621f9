"""The quick start end to end (load, train configs/emoji.yaml, generate), with every optimization on
against reft's plain path (all of them off), in one run on this machine.

Each run is its own process, so its peak resident memory (ru_maxrss) is its own; with --rounds N
the two alternate N times and the fastest of each is printed (other work on the machine only ever
slows a run down). CPU seconds are printed beside wall seconds: on a busy machine, with
--threads 1, their ratio is the steadier measure.

    python bench/quickstart.py [--epochs 100] [--rounds 1] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).parents[1] / "configs" / "emoji.yaml"
QUESTIONS = ["What is the capital of France?", "Write a poem about the sea.", "What's your name?"]
SPEED_UPS = (
    "cache_frozen_prefix",
    "cache_frozen_layers",
    "lm_head_on_targets",
    "fused_head_loss",
    "group_by_length",
    "packing",
)


def end_to_end(out: Path, epochs: int, optimized: bool, threads: int | None) -> dict:
    """Seconds end to end and in training, final loss, answers and peak memory of one run."""
    start, cpu = time.perf_counter(), time.process_time()
    import torch
    from rich.console import Console

    from reft_cli.config.reader import load_config
    from reft_cli.engine.base_models import load_tokenizer
    from reft_cli.engine.reft_model import ReftModel
    from reft_cli.training.trainer import Trainer

    if threads:
        torch.set_num_threads(threads)
    overrides = [f"train.output_dir={out}", f"train.num_train_epochs={epochs}"]
    overrides += [f"train.{key}={str(optimized).lower()}" for key in SPEED_UPS]
    log = io.StringIO()
    summary = Trainer(load_config(CONFIG, overrides), Console(file=log, width=300)).train()
    model = ReftModel.from_pretrained(out).eval()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tokenizer.padding_side = "left"
    prompts = [model.reft_config.prompt_template.format(prompt=q) for q in QUESTIONS]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out_ids = model.generate(
            batch.input_ids,
            batch.attention_mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(
        out_ids[:, batch.input_ids.shape[1] :], skip_special_tokens=True
    )
    return {
        "total": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
        "train": summary.seconds,
        "loss": summary.final_loss,
        "answers": answers,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache": [line for line in log.getvalue().splitlines() if "frozen-state" in line],
        "threads": torch.get_num_threads(),
    }


def in_child(epochs: int, optimized: bool, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, __file__, "--child", str(optimized), "--epochs", str(epochs)]
        command += ["--out", tmp] + (["--threads", str(threads)] if threads else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads per run [torch's default]")
    parser.add_argument("--child", choices=["True", "False"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = end_to_end(Path(args.out) / "run", args.epochs, args.child == "True", args.threads)
        print(json.dumps(run))
        return
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for optimized in (False, True):
            runs[optimized].append(in_child(args.epochs, optimized, args.threads))

    def best(optimized: bool, key: str) -> float:
        return min(r[key] for r in runs[optimized])

    print(
        f"quick start, {args.epochs} epochs, torch threads {runs[True][0]['threads']}, "
        f"fastest of {args.rounds}"
    )
    for optimized, name in ((False, "plain path"), (True, "optimized ")):
        print(
            f"{name}: {best(optimized, 'total'):.1f} s end to end "
            f"({best(optimized, 'cpu'):.1f} CPU s) "
            f"({best(optimized, 'train'):.1f} s in reft train), final loss "
            f"{runs[optimized][-1]['loss']:.4f}, peak memory {best(optimized, 'peak_mib'):.0f} MiB"
        )
    print(
        f"speed-up: {best(False, 'total') / best(True, 'total'):.2f}× end to end "
        f"({best(False, 'cpu') / best(True, 'cpu'):.2f}× in CPU time), "
        f"{best(False, 'train') / best(True, 'train'):.2f}× training"
    )
    for line in runs[True][-1]["cache"]:
        print(f"  {line}")
    for question, plain, fast in zip(
        QUESTIONS, runs[False][-1]["answers"], runs[True][-1]["answers"], strict=True
    ):
        print(f"  {question} -> {fast!r} (plain path: {plain!r})")


if __name__ == "__main__":
    main()
