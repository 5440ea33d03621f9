"""Cost of one ReFT training step against the frozen model's own floor, measured in the same run.

The floor is the base model's forward plus a backward that stops at the lowest intervened layer
(the least a plain step that trains there must compute). A ReFT step is forward, backward and the
optimizer step with the interventions in place; where the positions leave a frozen prompt prefix,
the step with the frozen-prefix cache (train.cache_frozen_prefix) is timed too. Printed as ratios;
no wall-clock assertions.

    python bench/step_cost.py                 # both shapes on the embedded SmolLM2
    python bench/step_cost.py --repeats 10 --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reft_cli import ReftConfig, get_reft_model
from reft_cli.base_models import load_model
from reft_cli.prefix_cache import PrefixCache
from reft_cli.steps import loss_sum

SHAPES = {
    # name: (layers, rank, positions, share_weights, batch, tokens, response tokens)
    "commonsense (all layers, r=8, f7+l7, tied, 8×72)": ("all", 8, "f7+l7", True, 8, 72, 8),
    "quick start (emoji.yaml shape, 10×40)": ([6, 12, 18, 24], 4, "l2", True, 10, 40, 12),
}


def batch(rows: int, tokens: int, response: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (rows, tokens), generator=generator)
    labels = ids.clone()
    labels[:, : tokens - response] = -100
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "prompt_lengths": torch.full((rows,), tokens - response),
    }


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_step(model, lowest: int, data) -> None:
    """Base forward + backward down to the lowest intervened layer's input."""
    blocks = model.model.layers

    def needs_grad(_module, args, kwargs):
        hidden = args[0].detach().requires_grad_()
        return (hidden, *args[1:]), kwargs

    handle = blocks[lowest].register_forward_pre_hook(needs_grad, with_kwargs=True)
    try:
        model(data["input_ids"], data["attention_mask"], labels=data["labels"]).loss.backward()
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"model: {args.model}; torch threads: {torch.get_num_threads()}; median of {args.repeats}"
    )
    for name, (layers, rank, positions, tied, rows, tokens, response) in SHAPES.items():
        base = load_model(args.model).requires_grad_(False)  # frozen, as under ReFT
        n = base.config.num_hidden_layers
        config = ReftConfig.for_layers(
            layers, n, rank=rank, positions=positions, share_weights=tied
        )
        lowest = min(site.layer for site in config.interventions)
        data = batch(rows, tokens, response, base.config.vocab_size)
        floor = timed(
            lambda base=base, lowest=lowest, data=data: floor_step(base, lowest, data), args.repeats
        )
        model = get_reft_model(base, config).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step(model=model, optimizer=optimizer, data=data) -> None:
            optimizer.zero_grad()
            model(**data).loss.backward()
            optimizer.step()

        reft = timed(step, args.repeats)
        print(f"{name}: floor {floor:.3f} s, reft step {reft:.3f} s, ratio {reft / floor:.3f}×")
        cache = PrefixCache(model, budget_bytes=2**30)
        data["example_ids"] = torch.arange(rows)

        def cached_step(model=model, optimizer=optimizer, data=data, cache=cache) -> None:
            optimizer.zero_grad()
            logits, labels = cache.forward(model, data)
            total, count = loss_sum(logits, labels, "causal_lm")
            (total / count).backward()
            optimizer.step()

        if any(cache.prefix_lengths(data) > 0):
            fast = timed(cached_step, args.repeats)
            print(
                f"  with the frozen-prefix cache: {fast:.3f} s, ratio {fast / floor:.3f}× the floor"
            )


if __name__ == "__main__":
    main()
