"""Generation speed with an adapter against the base model, measured in the same run.

Interventions edit only the prompt (prefill); decode steps run the base model over the KV cache, so
decode time per token should match the base model's. Printed as ratios, no wall-clock assertions.

    python bench/generate_speed.py [--adapter-layers 12,16,20,24] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reft_cli import ReftConfig, get_reft_model
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
    model = get_reft_model(
        base,
        ReftConfig.for_layers(layers, base.config.num_hidden_layers, positions=args.positions),
    ).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    settings = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": None}

    def run(new_tokens: int, adapter: bool) -> None:
        with torch.no_grad():
            if adapter:
                model.generate(
                    batch.input_ids, batch.attention_mask, max_new_tokens=new_tokens, **settings
                )
            else:
                with model.disable_adapter():
                    base.generate(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        max_new_tokens=new_tokens,
                        **settings,
                    )

    # Alternate base and adapter runs so drift in machine load hits both alike.
    samples: dict[tuple[bool, int], list[float]] = {}
    for new_tokens in (1, args.new_tokens + 1):
        for adapter in (False, True):
            run(new_tokens, adapter)  # warm-up
        for _ in range(args.repeats):
            for adapter in (False, True):
                start = time.perf_counter()
                run(new_tokens, adapter)
                samples.setdefault((adapter, new_tokens), []).append(time.perf_counter() - start)
    result = {}
    for adapter in (False, True):
        prefill = statistics.median(samples[(adapter, 1)])
        full = statistics.median(samples[(adapter, args.new_tokens + 1)])
        result[adapter] = (prefill, (full - prefill) / args.new_tokens)
    (base_prefill, base_decode), (reft_prefill, reft_decode) = result[False], result[True]
    print(f"model {args.model}, batch {len(PROMPTS)}, layers {layers}, positions {args.positions}")
    print(
        f"prefill: base {base_prefill * 1e3:.1f} ms, reft {reft_prefill * 1e3:.1f} ms, ratio {reft_prefill / base_prefill:.3f}×"
    )
    print(
        f"decode per token: base {base_decode * 1e3:.2f} ms, reft {reft_decode * 1e3:.2f} ms, ratio {reft_decode / base_decode:.3f}×"
    )


if __name__ == "__main__":
    main()
