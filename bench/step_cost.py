"""Cost of one ReFT training step against the frozen model's own floor, measured in the same run.

The floor is the base model's forward plus a backward that stops at the lowest intervened layer
(the least a plain step that trains there must compute). A ReFT step is forward, backward and the
optimizer step with the interventions in place, timed on reft's plain path and with every
optimization on (frozen-state cache, lm head on response positions). Beside them, a step of the LoRA
baseline as the offline recipes train it (rank 1 on every value projection, through PEFT). All are
timed in turn, round after round, and the fastest round per kind is printed with ratios (other work
on the machine only ever slows a round down); no wall-clock assertions.

    python bench/step_cost.py                 # both shapes on the embedded SmolLM2
    python bench/step_cost.py --repeats 10 --model smollm2-135m-instruct
    python bench/step_cost.py --threads 1 --cpu-time   # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import time

import torch

from reft_cli import ReftConfig, get_reft_model
from reft_cli.config.schema import LoraSection
from reft_cli.engine.base_models import load_model
from reft_cli.engine.lora import get_lora_model
from reft_cli.engine.lora_config import LoraAdapterConfig
from reft_cli.training.loss import forward, loss_sum
from reft_cli.training.prefix_cache import PrefixCache

SHAPES = {
    # name: (layers, rank, positions, share_weights, batch, tokens, response tokens)
    "commonsense (all layers, r=8, f7+l7, tied, 8×72)": ("all", 8, "f7+l7", True, 8, 72, 8),
    "quick start (emoji.yaml shape, 10×34)": ([16, 20, 24], 4, "l2", True, 10, 34, 16),
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
        "example_ids": torch.arange(rows),
    }


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
    parser.add_argument("--threads", type=int, help="torch threads [torch's default]")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU seconds, not wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    print(
        f"model: {args.model}; torch threads: {torch.get_num_threads()}; fastest of "
        f"{args.repeats}, {'CPU' if args.cpu_time else 'wall'} seconds"
    )
    for name, (layers, rank, positions, tied, rows, tokens, response) in SHAPES.items():
        base = load_model(args.model).requires_grad_(False)  # frozen, as under ReFT
        config = ReftConfig.for_layers(
            layers,
            base.config.num_hidden_layers,
            rank=rank,
            positions=positions,
            share_weights=tied,
        )
        lowest = min(site.layer for site in config.interventions)
        data = batch(rows, tokens, response, base.config.vocab_size)
        model = get_reft_model(base, config).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        cache = PrefixCache(model, budget_bytes=2**30, head_on_targets=True)
        lora = get_lora_model(
            load_model(args.model),
            LoraSection(r=1, alpha=2, target_modules=["v_proj"]),
            LoraAdapterConfig(base_model=args.model),
        ).train()
        lora_optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad])

        def step(outputs_and_targets, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            total, count = loss_sum(*outputs_and_targets(), "causal_lm")
            (total / count).backward()
            optimizer.step()

        kinds = {
            "floor": lambda base=base, lowest=lowest, data=data: floor_step(base, lowest, data),
            "plain": lambda model=model, data=data: step(lambda: forward(model, data)),
            "optimized": lambda model=model, data=data, cache=cache: step(
                lambda: cache.forward(model, data)
            ),
            "lora": lambda lora=lora, data=data, optimizer=lora_optimizer: step(
                lambda: forward(lora, data, head_on_targets=True), optimizer
            ),
        }
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for round_ in range(args.repeats + 1):  # round 0 warms up (and fills the cache)
            for kind, run in kinds.items():
                start = clock()
                run()
                if round_:
                    times[kind].append(clock() - start)
        floor, plain, fast, lora_step = (min(times[k]) for k in kinds)
        print(
            f"{name}: floor {floor:.3f} s; reft plain {plain:.3f} s ({plain / floor:.2f}×); "
            f"reft optimized {fast:.3f} s ({fast / floor:.2f}×; {plain / fast:.2f}× faster); "
            f"LoRA r1 v_proj {lora_step:.3f} s ({lora_step / floor:.2f}×; "
            f"{lora_step / fast:.2f}× reft optimized's time)"
        )
        print(f"  {cache.describe()}")


if __name__ == "__main__":
    main()
