"""Cost of one ReFT training step against the frozen model's own floor, measured in the same run.

The floor is the base model's forward plus a backward that stops at the lowest intervened layer
(the least a plain step that trains there must compute). A ReFT step is forward, backward and the
optimizer step with the interventions in place, timed on reft's plain path and with every
optimization on (frozen-state cache, lm head on response positions), with the rows padded and
packed into one sequence (train.packing). Beside them, a step of the LoRA
baseline as the offline recipes train it (rank 1 on every value projection, through PEFT). All are
timed in turn, round after round, and the fastest round per kind is printed with ratios (other work
on the machine only ever slows a round down); no wall-clock assertions.

    python bench/step_cost.py                 # both shapes on the embedded SmolLM2
    python bench/step_cost.py --repeats 10 --model smollm2-135m-instruct
    python bench/step_cost.py --threads 1 --cpu-time   # steadier on a busy machine
    python bench/step_cost.py --shape mixed            # padded against packed rows only
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
from reft_cli.training.packing import Packer
from reft_cli.training.prefix_cache import PrefixCache

SHAPES = {
    # name: (layers, rank, positions, share_weights, row lengths, response tokens per row)
    "commonsense (all layers, r=8, f7+l7, tied, 8×72)": ("all", 8, "f7+l7", True, [72] * 8, 8),
    "quick start (emoji.yaml shape, 10×34)": ([16, 20, 24], 4, "l2", True, [34] * 10, 16),
    # One long answer among short ones, as in pyreft's emoji examples: padding is most of a batch.
    "mixed lengths (emoji.yaml shape, 1×170 + 9×30..46)": (
        [16, 20, 24],
        4,
        "l2",
        True,
        [170, 30, 32, 34, 36, 38, 40, 42, 44, 46],
        None,  # the prompt is each row's first 24 tokens, the rest its response
    ),
}
PROMPT = 24


def batch(lengths: list[int], response: int | None, vocab: int) -> dict[str, torch.Tensor]:
    """Right-padded rows of these lengths; the last `response` tokens of each are its target."""
    generator = torch.Generator().manual_seed(0)
    width = max(lengths)
    ids = torch.randint(10, vocab, (len(lengths), width), generator=generator)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(width)[None] < lengths_t[:, None]
    prompts = lengths_t - response if response is not None else torch.full_like(lengths_t, PROMPT)
    labels = torch.where(mask & (torch.arange(width)[None] >= prompts[:, None]), ids, -100)
    return {
        "input_ids": ids * mask,
        "attention_mask": mask.long(),
        "labels": labels,
        "prompt_lengths": prompts,
        "example_ids": torch.arange(len(lengths)),
    }


def floor_step(model, lowest: int, data, reft) -> None:
    """Base forward + backward down to the lowest intervened layer's input, with `reft`'s
    hooks disarmed (they keep the last forward's plan, for a checkpointed backward)."""
    blocks = model.model.layers

    def needs_grad(_module, args, kwargs):
        hidden = args[0].detach().requires_grad_()
        return (hidden, *args[1:]), kwargs

    handle = blocks[lowest].register_forward_pre_hook(needs_grad, with_kwargs=True)
    try:
        with reft.disable_adapter():
            model(data["input_ids"], data["attention_mask"], labels=data["labels"]).loss.backward()
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads [torch's default]")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU seconds, not wall")
    parser.add_argument("--shape", default="", help="only the shapes whose name has this text")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    print(
        f"model: {args.model}; torch threads: {torch.get_num_threads()}; fastest of "
        f"{args.repeats}, {'CPU' if args.cpu_time else 'wall'} seconds"
    )
    for name, (layers, rank, positions, tied, lengths, response) in SHAPES.items():
        if args.shape not in name:
            continue
        base = load_model(args.model).requires_grad_(False)  # frozen, as under ReFT
        config = ReftConfig.for_layers(
            layers,
            base.config.num_hidden_layers,
            rank=rank,
            positions=positions,
            share_weights=tied,
        )
        lowest = min(site.layer for site in config.interventions)
        data = batch(lengths, response, base.config.vocab_size)
        model = get_reft_model(base, config).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        cache = PrefixCache(model, budget_bytes=2**30, head_on_targets=True)
        packer = Packer(model, head_on_targets=True, required=True)
        packed = PrefixCache(model, budget_bytes=2**30, head_on_targets=True, packer=packer)
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
            "floor": lambda base=base, lowest=lowest, data=data, model=model: floor_step(
                base, lowest, data, model
            ),
            "plain": lambda model=model, data=data: step(lambda: forward(model, data)),
            "optimized": lambda model=model, data=data, cache=cache: step(
                lambda: cache.forward(model, data)
            ),
            "packed": lambda model=model, data=data, cache=packed: step(
                lambda: cache.forward(model, data)
            ),
            "plain packed": lambda model=model, data=data, packer=packer: step(
                lambda: packer.forward(model, data)
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
        floor, plain, fast, pack, plain_pack, lora_step = (min(times[k]) for k in kinds)
        real = sum(lengths) / (len(lengths) * max(lengths))
        print(
            f"{name}: floor {floor:.3f} s; reft plain {plain:.3f} s ({plain / floor:.2f}×); "
            f"reft optimized {fast:.3f} s ({fast / floor:.2f}×; {plain / fast:.2f}× faster); "
            f"LoRA r1 v_proj {lora_step:.3f} s ({lora_step / floor:.2f}×; "
            f"{lora_step / fast:.2f}× reft optimized's time)"
        )
        print(
            f"  packed ({real:.0%} of the padded batch is real tokens): plain {plain_pack:.3f} s "
            f"({plain / plain_pack:.2f}× faster than padded), optimized {pack:.3f} s "
            f"({fast / pack:.2f}× faster than padded)"
        )
        print(f"  {cache.describe()}")
        print(f"  {packed.describe()}")


if __name__ == "__main__":
    main()
