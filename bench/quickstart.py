"""The quick start end to end (load, train configs/emoji.yaml, generate), with every optimization on
against reft's plain path (`train.cache_frozen_prefix=false`), in one run on this machine.

    python bench/quickstart.py [--epochs 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from reft_cli.base_models import load_tokenizer
from reft_cli.config import load_config
from reft_cli.model import ReftModel
from reft_cli.trainer import Trainer

CONFIG = Path(__file__).parents[1] / "configs" / "emoji.yaml"
QUESTIONS = ["What is the capital of France?", "Write a poem about the sea.", "What's your name?"]


def end_to_end(out: Path, epochs: int, cache: bool) -> tuple[float, float, list[str]]:
    """(total seconds, training seconds, answers) for one quick start run."""
    start = time.perf_counter()
    overrides = [
        f"train.output_dir={out}",
        f"train.num_train_epochs={epochs}",
        f"train.cache_frozen_prefix={str(cache).lower()}",
    ]
    summary = Trainer(load_config(CONFIG, overrides), Console(quiet=True)).train()
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
    return time.perf_counter() - start, summary.seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            cache: end_to_end(Path(tmp) / str(cache), args.epochs, cache) for cache in (False, True)
        }
    (plain_total, plain_train, _), (fast_total, fast_train, answers) = results[False], results[True]
    print(f"quick start, {args.epochs} epochs, torch threads {torch.get_num_threads()}")
    print(f"plain path: {plain_total:.1f} s end to end ({plain_train:.1f} s in reft train)")
    print(f"optimized:  {fast_total:.1f} s end to end ({fast_train:.1f} s in reft train)")
    print(
        f"speed-up: {plain_total / fast_total:.2f}× end to end, {plain_train / fast_train:.2f}× training"
    )
    for question, answer in zip(QUESTIONS, answers, strict=True):
        print(f"  {question} -> {answer}")


if __name__ == "__main__":
    main()
