"""Serving throughput: one request mix through `reft serve`'s engine for the base model alone, every
row on one adapter, and rows spread over 4 and 16 adapters, then the same mix over 16 PEFT LoRA
adapters of about the same parameter count in PEFT's mixed-adapter generate; measured in one run.

Requests go to an in-process engine (the worker thread `reft serve` runs, without HTTP), all at
once or, with --arrivals R, at R requests a second on average (seeded Poisson arrivals, the same
schedule for every mix): the engine admits rows between decode steps up to --max-batch-size
(continuous batching). PEFT has no server, so its rows run as static batches of at most
--max-batch-size through `generate(adapter_names=...)`, each batch taking the requests that have
arrived when the previous one ends; the base model through the same static batches is printed as
its reference. Greedy decoding, end-of-text ignored so every row generates exactly --max-tokens.
Printed: completion tokens per second (per CPU second of the process with --cpu-time, which other
jobs on the machine disturb far less than wall time; use it with --threads 1) and the ratio to the
engine's base model, p50/p95 time to first token (wall time from each request's arrival), and the
batch sizes the engine's decode steps ran at. Adapters are random (their weights do not matter for
speed), saved to a temporary folder and loaded through the one loader.

    python bench/serve_throughput.py [--model smollm2-135m-instruct] [--requests 64] [--max-tokens 32]
    python bench/serve_throughput.py --threads 1 --cpu-time        # steadier on a busy machine
    python bench/serve_throughput.py --arrivals 2 --no-peft        # staggered: first-token times
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from reft_cli import ReftConfig, get_reft_model
from reft_cli.data.examples import left_padded
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.loading import Placement, load_adapters, resolve_device
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
ADAPTERS = 16


def make_adapters(model: str, folder: Path, layers: list[int], positions: str) -> tuple[dict, int]:
    """Random ReFT adapters a0..a15, and one adapter's parameter count."""
    base = load_model(model)
    num_layers = base.config.num_hidden_layers
    found, size = {}, 0
    for i in range(ADAPTERS):
        config = ReftConfig.for_layers(
            layers, num_layers, rank=4, positions=positions, base_model=model
        )
        reft = get_reft_model(base, config)
        torch.manual_seed(i)
        with torch.no_grad():
            for p in reft.interventions.parameters():
                p.normal_(std=0.02)
        size = sum(p.numel() for p in reft.interventions.parameters())
        reft.save_pretrained(folder / f"a{i}")
        reft.unload()
        found[f"a{i}"] = folder / f"a{i}"
    return found, size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def arrival_times(requests: int, rate: float | None) -> list[float]:
    """Seconds after the start at which each request arrives: all at 0, or Poisson at `rate`/s."""
    if not rate:
        return [0.0] * requests
    draw, at, times = random.Random(0), 0.0, []
    for _ in range(requests):
        times.append(at)
        at += draw.expovariate(rate)
    return times


async def run_mix(
    engine: Engine, names: list[str], arrivals: list[float], max_tokens: int, clock: Callable
) -> dict:
    """Request i on names[i % len], arriving at arrivals[i]: tokens/s, first-token times, batch
    sizes."""
    tokenizer = engine.loaded.tokenizer
    pendings = [
        Pending(
            tokenizer,
            [tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"]],
            names[i % len(names)],
            [max_tokens],
            Sampling(0.0),
            1,
            [],
            False,
        )
        for i in range(len(arrivals))
    ]
    engine.batch_sizes.clear()
    start, began = clock(), time.monotonic()
    submitted = []
    for at, pending in zip(arrivals, pendings, strict=True):
        await asyncio.sleep(max(0.0, began + at - time.monotonic()))
        submitted.append(time.monotonic())
        engine.submit(pending.rows)
    await asyncio.gather(*(p.result() for p in pendings))
    elapsed = clock() - start
    steps = engine.batch_sizes
    return {
        "rate": sum(p.completion_tokens for p in pendings) / elapsed,
        "ttft": [p.first_token_at - t for p, t in zip(pendings, submitted, strict=True)],
        "batch": (sum(k * v for k, v in steps.items()) / sum(steps.values()), max(steps)),
    }


async def measure(args: argparse.Namespace, adapters: dict, peft_runs: dict | None) -> dict:
    """Every mix `--repeats` times, interleaved, so drift on a shared machine hits all alike."""
    loaded = load_adapters(adapters, placement=Placement(device=args.device))
    # Every row generates exactly max_tokens: an end-of-text token would end some rows early and
    # make the mixes' token counts differ for reasons that are not speed.
    loaded.base_model.generation_config.eos_token_id = None
    engine = Engine(loaded, args.max_batch_size, max_queue=args.requests * 4)
    arrivals, clock = arrival_times(args.requests, args.arrivals), rate_clock(args)
    engine.eos = set()
    engine.start(asyncio.get_running_loop())
    names = [f"a{i}" for i in range(ADAPTERS)]
    mixes = {"base model": ["base"], "one adapter": names[:1], "4 adapters": names[:4]}
    mixes["16 adapters"] = names
    await run_mix(engine, ["base"], [0.0] * args.max_batch_size, 4, clock)  # warm-up
    results: dict[str, list[dict]] = {name: [] for name in [*mixes, *(peft_runs or {})]}
    for _ in range(args.repeats):
        for name, mix in mixes.items():
            results[name].append(await run_mix(engine, mix, arrivals, args.max_tokens, clock))
        for name, run in (peft_runs or {}).items():
            results[name].append(run())
    engine.close()
    return results


class FirstToken(BaseStreamer):
    """The time of a generate call's first new token (its second `put`; the first is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.at = 0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.monotonic()

    def end(self) -> None:
        pass


def peft_runs(args: argparse.Namespace, layers: list[int], reft_size: int) -> dict:
    """16 LoRA adapters (q_proj, v_proj on the ReFT layers, rank matched to the ReFT adapter's
    parameter count) in static mixed-adapter batches, and the base model in the same batches:
    one call each per run."""
    from peft import LoraConfig, get_peft_model

    device = resolve_device(args.device)
    base = load_model(args.model).to(device).eval()
    tokenizer = load_tokenizer(args.model)
    attention = base.model.layers[0].self_attn
    per_rank = len(layers) * sum(
        m.in_features + m.out_features for m in (attention.q_proj, attention.v_proj)
    )
    rank = max(1, round(reft_size / per_rank))
    config = LoraConfig(
        r=rank, target_modules=["q_proj", "v_proj"], layers_to_transform=layers, lora_dropout=0.0
    )
    model = get_peft_model(base, config, adapter_name="l0").eval()
    for i in range(1, ADAPTERS):
        model.add_adapter(f"l{i}", config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    lora_size = sum(p.numel() for n, p in model.named_parameters() if ".l0." in n)
    base.generation_config.eos_token_id = None
    print(f"LoRA rank {rank}: {lora_size:,} parameters per adapter (ReFT: {reft_size:,})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(args.requests)]
    names = [f"l{i % ADAPTERS}" for i in range(args.requests)]
    size = args.max_batch_size

    arrivals, clock = arrival_times(args.requests, args.arrivals), rate_clock(args)

    def run(adapter_names: list[str] | None) -> dict:
        ttft, tokens, at, sizes = [], 0, 0, []
        start, began = clock(), time.monotonic()
        while at < len(rows):
            # A static batch takes every request that has arrived (at least the next one).
            time.sleep(max(0.0, began + arrivals[at] - time.monotonic()))
            now = time.monotonic() - began
            end = at + 1
            while end < min(len(rows), at + size) and arrivals[end] <= now:
                end += 1
            batch = left_padded(rows[at:end], pad)
            first = FirstToken()
            kwargs = {"adapter_names": adapter_names[at:end]} if adapter_names else {}
            with torch.no_grad():
                out = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    streamer=first,
                    **kwargs,
                )
            tokens += (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
            ttft += [first.at - began - arrivals[i] for i in range(at, end)]
            sizes.append(end - at)
            at = end
        rate = tokens / (clock() - start)
        return {"rate": rate, "ttft": ttft, "batch": (sum(sizes) / len(sizes), max(sizes))}

    def base_run() -> dict:
        with model.disable_adapter():
            return run(None)

    base_run()  # warm-up
    return {"PEFT 16 LoRA": lambda: run(names), "static base model": base_run}


def rate_clock(args: argparse.Namespace) -> Callable[[], float]:
    """The clock tokens per second are taken on: the process's CPU seconds, or wall seconds."""
    return time.process_time if args.cpu_time else time.perf_counter


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
    parser.add_argument("--arrivals", type=float, help="requests a second [all at once]")
    parser.add_argument("--threads", type=int, help="torch threads [torch's default]")
    parser.add_argument("--cpu-time", action="store_true", help="tokens per CPU second, not wall")
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT LoRA comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        adapters, reft_size = make_adapters(args.model, Path(tmp), layers, args.positions)
        peft = None if args.no_peft else peft_runs(args, layers, reft_size)
        results = asyncio.run(measure(args, adapters, peft))
    arriving = f"at {args.arrivals:g}/s" if args.arrivals else "at once"
    per = "CPU second" if args.cpu_time else "second"
    print(
        f"{args.model} on {resolve_device(args.device)}, {torch.get_num_threads()} thread(s): "
        f"{args.requests} requests {arriving}, {args.max_tokens} new tokens each, batch "
        f"{args.max_batch_size}, best of {args.repeats}; tokens per {per}"
    )
    best = {name: max(runs, key=lambda r: r["rate"]) for name, runs in results.items()}
    reference = best["base model"]["rate"]
    print(f"  {'':18s} {'tokens/s':>9s} {'ratio':>6s} {'TTFT p50':>9s} {'p95':>7s}  batch mean/max")
    for name, run in best.items():
        p50, p95 = percentile(run["ttft"], 0.5), percentile(run["ttft"], 0.95)
        mean, most = run["batch"]
        print(
            f"  {name:18s} {run['rate']:9.1f} {run['rate'] / reference:5.2f}x "
            f"{p50:8.2f}s {p95:6.2f}s  {mean:.1f}/{most}"
        )


if __name__ == "__main__":
    main()
