"""pyreft's side of bench/pyreft_speed.py, run with pyreft's python (pyreft 0.1.0, transformers
4.45.1): loads reft's exported initial adapter with pyreft.ReftModel.load and trains it the way
pyreft's ReftTrainer.compute_loss does, on the spec's token ids and positions.

    /tmp/pyreft-venv/bin/python bench/pyreft_speed_pyreft.py SHAPE_FOLDER
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import pyreft
import torch
from check_pyreft import reload_fp32
from flops import step_flops
from pyreft_speed import batch_of
from transformers import AutoConfig, AutoModelForCausalLM, get_scheduler


def main() -> None:
    folder = Path(sys.argv[1])
    spec = json.loads((folder / "spec.json").read_text())
    clock = time.process_time if spec["cpu_time"] else time.perf_counter
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    # transformers 5 saves rope_theta inside rope_parameters, which 4.45 does not read (it would
    # silently use its default, 10,000, where SmolLM2 has 100,000).
    config = AutoConfig.from_pretrained(spec["model"])
    rope = getattr(config, "rope_parameters", None)
    if rope and "rope_theta" in rope:
        config.rope_theta = rope["rope_theta"]
    model = AutoModelForCausalLM.from_pretrained(
        spec["model"], config=config, torch_dtype=torch.float32
    )
    reft_model = pyreft.ReftModel.load(str(folder / "init-pyreft"), model)
    reft_model.set_device("cpu")
    reload_fp32(reft_model, folder / "init-pyreft")  # its loader builds W, b in bfloat16
    reft_model.disable_model_gradients()  # as pyreft.get_reft_model leaves the base model
    reft_model.train()
    params = [p for i in reft_model.interventions.values() for p in i.parameters()]
    optimizer = torch.optim.AdamW(params, lr=spec["learning_rate"], weight_decay=0.0)
    scheduler = get_scheduler("linear", optimizer, 0, spec["steps"])
    batch = batch_of(spec["examples"], spec["pad_id"])  # the padding reft's side starts from
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    def step() -> torch.Tensor:
        _, out = reft_model(
            {"input_ids": ids, "attention_mask": mask},
            unit_locations={"sources->base": (None, spec["locations"])},
            labels=labels,
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss

    seconds, losses = [], []
    for _ in range(spec["steps"]):
        start = clock()
        loss = step()
        seconds.append(clock() - start)
        losses.append(loss.item())
    flops = step_flops(step)  # one more step, after the timed ones, so it changes none of them
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"seconds": seconds, "losses": losses, "peak_rss_mb": peak, "flops": flops, "note": ""}
        )
    )


if __name__ == "__main__":
    main()
