"""Generation speed with adapters against the base model, measured in the same run.

Interventions edit only the prompt (prefill); decode steps run the base model over the KV cache, so
decode time per token should match the base model's, for one adapter and for a batch whose rows use
three different adapters and the base model (one ReftModel, one hook per site). Printed as ratios,
no wall-clock assertions.

    python bench/generate_speed.py [--adapter-layers 12,16,20,24] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reft_cli import ReftConfig, ReftModel
from reft_cli.engine.base_models import load_model, load_tokenizer

PROMPTS = [
    "Explain how a bicycle stays upright while moving.",
    "Write a short story about a lighthouse keeper.",
    "What are three tips for learning a new language?",
    "Describe the water cycle.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter-layers", default="12,16,20,24")
    parser.add_argument("--positions", default="f3+l3")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    tokenizer.padding_side = "left"
    base = load_model(args.model)
    layers = [int(x) for x in args.adapter_layers.split(",")]
    num_layers = base.config.num_hidden_layers
    model = ReftModel(
        base, ReftConfig.for_layers(layers, num_layers, positions=args.positions), "a"
    )
    # Two more adapters with other layers, positions and ranks: the mixed batch's rows differ.
    model.add_adapter("b", ReftConfig.for_layers(layers[::2], num_layers, rank=2, positions="l1"))
    model.add_adapter(
        "c", ReftConfig.for_layers(layers[1::2], num_layers, rank=8, positions="f1+l1")
    )
    model.eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    settings = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": None}
    rows = len(PROMPTS)
    names = {
        "one adapter": ["a"] * rows,
        "3 adapters + base": (["a", "b", "c", "base"] * rows)[:rows],
    }

    def run(new_tokens: int, mode: str) -> None:
        with torch.no_grad():
            if mode == "base":
                with model.disable_adapter():
                    base.generate(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        max_new_tokens=new_tokens,
                        **settings,
                    )
                return
            model.generate(
                batch.input_ids,
                batch.attention_mask,
                adapter_names=names[mode],
                max_new_tokens=new_tokens,
                **settings,
            )

    # Alternate the modes so drift in machine load hits all alike.
    modes = ("base", "one adapter", "3 adapters + base")
    samples: dict[tuple[str, int], list[float]] = {}
    for new_tokens in (1, args.new_tokens + 1):
        for mode in modes:
            run(new_tokens, mode)  # warm-up
        for _ in range(args.repeats):
            for mode in modes:
                start = time.perf_counter()
                run(new_tokens, mode)
                samples.setdefault((mode, new_tokens), []).append(time.perf_counter() - start)
    result = {}
    for mode in modes:
        prefill = statistics.median(samples[(mode, 1)])
        full = statistics.median(samples[(mode, args.new_tokens + 1)])
        result[mode] = (prefill, (full - prefill) / args.new_tokens)
    print(f"model {args.model}, batch {rows}, layers {layers}, positions {args.positions}")
    print(
        f"{'':20} {'prefill ms':>11} {'decode ms/token':>16} {'prefill ×base':>14} {'decode ×base':>13}"
    )
    base_prefill, base_decode = result["base"]
    for mode in modes:
        prefill, decode = result[mode]
        print(
            f"{mode:20} {prefill * 1e3:11.1f} {decode * 1e3:16.2f} "
            f"{prefill / base_prefill:14.3f} {decode / base_decode:13.3f}"
        )
    one, mixed = result["one adapter"][1], result["3 adapters + base"][1]
    print(f"decode per token, mixed batch / one adapter: {mixed / one:.3f}×")


if __name__ == "__main__":
    main()
