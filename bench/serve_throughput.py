"""Serving throughput: the same request mix through `reft serve`'s engine for the base model alone,
every row on one adapter, and rows spread over four adapters, measured in one run.

All requests are submitted at once to an in-process engine (the worker thread `reft serve` runs,
without HTTP), so batches fill to --max-batch-size; greedy decoding, end-of-text ignored so every
row generates exactly --max-tokens. Completion tokens per second
are printed with ratios against the base model. Adapters are random (their weights do not matter
for speed), saved to a temporary folder and loaded through the one loader.

    python bench/serve_throughput.py [--model smollm2-135m-instruct] [--requests 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine.base_models import load_model
from reft_cli.engine.loading import Placement, load_adapters
from reft_cli.generation.server.engine import Engine, Sampling
from reft_cli.generation.server.pending import Pending

PROMPTS = [
    "Explain how a bicycle stays upright while moving.",
    "Write a short story about a lighthouse keeper.",
    "What are three tips for learning a new language?",
    "Describe the water cycle.",
    "Why is the sky blue?",
    "Give me a recipe for pancakes.",
]


def make_adapters(model: str, folder: Path, count: int, layers: list[int], positions: str) -> dict:
    base = load_model(model)
    num_layers = base.config.num_hidden_layers
    found = {}
    for i in range(count):
        config = ReftConfig.for_layers(
            layers, num_layers, rank=4, positions=positions, base_model=model
        )
        reft = get_reft_model(base, config)
        torch.manual_seed(i)
        with torch.no_grad():
            for p in reft.interventions.parameters():
                p.normal_(std=0.02)
        reft.save_pretrained(folder / f"a{i}")
        reft.unload()
        found[f"a{i}"] = folder / f"a{i}"
    return found


async def run_mix(engine: Engine, names: list[str], requests: int, max_tokens: int) -> float:
    """Completion tokens per second for `requests` prompts, request i on names[i % len]."""
    tokenizer = engine.loaded.tokenizer
    pendings = []
    for i in range(requests):
        ids = tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"]
        pendings.append(
            Pending(
                tokenizer,
                [ids],
                names[i % len(names)],
                [max_tokens],
                Sampling(0.0),
                1,
                [],
                False,
                engine.eos,
            )
        )
    start = time.perf_counter()
    for pending in pendings:
        engine.submit(pending.rows)
    await asyncio.gather(*(p.result() for p in pendings))
    elapsed = time.perf_counter() - start
    return sum(p.completion_tokens for p in pendings) / elapsed


async def measure(args: argparse.Namespace, adapters: dict) -> dict[str, float]:
    loaded = load_adapters(adapters, placement=Placement(device=args.device))
    # Every row generates exactly max_tokens: an end-of-text token would end some rows early and
    # make the mixes' token counts differ for reasons that are not speed.
    loaded.base_model.generation_config.eos_token_id = None
    engine = Engine(loaded, args.max_batch_size, max_queue=args.requests * 4)
    engine.eos = set()
    engine.start(asyncio.get_running_loop())
    mixes = {
        "base model": ["base"],
        "one adapter": ["a0"],
        "four adapters": ["a0", "a1", "a2", "a3"],
    }
    await run_mix(engine, ["base"], args.max_batch_size, 4)  # warm-up
    results: dict[str, list[float]] = {name: [] for name in mixes}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
        for name, names in mixes.items():
            results[name].append(await run_mix(engine, names, args.requests, args.max_tokens))
    engine.close()
    return {name: max(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layers", default="8,16,24")
    parser.add_argument("--positions", default="f1+l1")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        layers = [int(x) for x in args.layers.split(",")]
        adapters = make_adapters(args.model, Path(tmp), 4, layers, args.positions)
        results = asyncio.run(measure(args, adapters))
    base = results["base model"]
    print(
        f"{args.model}: {args.requests} requests, {args.max_tokens} new tokens, batch {args.max_batch_size}"
    )
    for name, rate in results.items():
        print(f"  {name:14s} {rate:8.1f} tokens/s  {rate / base:5.2f}x the base model")


if __name__ == "__main__":
    main()
