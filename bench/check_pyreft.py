"""Runs in pyreft's virtual environment (pyreft 0.1.0, pyvene 0.1.8, transformers 4.45.1), started
by bench/pyreft_parity.py: loads each `reft export --format pyreft` folder with
pyreft.ReftModel.load on the same tiny base model, runs the same inputs at the same positions, and
compares the logits with reft's.

Two of pyreft's loader's limits are worked around, and reported:
- it builds each intervention's W, b in bfloat16 (pyreft's default dtype; config.json cannot carry
  one), so on a float32 model LoreftIntervention fails and the others round W, b to bfloat16. After
  loading, the interventions are cast to float32 and their intkey_*.bin state loaded again.
- it cannot rebuild NoreftIntervention or NodireftIntervention: it does not pass `add_bias`, which
  their constructors index (KeyError). Those adapters are built with pyreft.get_reft_model from the
  same config.json and their state loaded with load_state_dict.

    /tmp/pyreft-venv/bin/python bench/check_pyreft.py WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyreft
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def load_base(work: Path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(
        work / "base", torch_dtype=dtype, attn_implementation="eager"
    ).eval()


def state_path(folder: Path, key: str) -> Path:
    return folder / f"intkey_{key}.bin"


def build_by_hand(folder: Path, model):
    """pyreft.get_reft_model from config.json, passing what ReftModel.load leaves out."""
    config = json.loads((folder / "config.json").read_text())
    representations = []
    for rep, type_string, key in zip(
        config["representations"], config["intervention_types"], config["sorted_keys"], strict=True
    ):
        cls = getattr(pyreft, type_string.rsplit(".", 1)[-1].rstrip("'>"))
        state = torch.load(state_path(folder, key), weights_only=True)
        intervention = cls(
            embed_dim=model.config.hidden_size,
            low_rank_dimension=rep[4],
            add_bias="proj_layer.bias" in state,
            dtype=torch.float32,
        )
        representations.append(
            {
                "layer": rep[0],
                "component": rep[1],
                "low_rank_dimension": rep[4],
                "intervention": intervention,
            }
        )
    return pyreft.get_reft_model(model, pyreft.ReftConfig(representations=representations))


def reload_fp32(reft_model, folder: Path) -> None:
    for key, intervention in reft_model.interventions.items():
        intervention.float()
        intervention.load_state_dict(torch.load(state_path(folder, key), weights_only=True))


def run(reft_model, tensors, locations):
    with torch.no_grad():
        _, out = reft_model(
            {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]},
            unit_locations={"sources->base": (None, locations)},
        )
    return out.logits


def make_pyreft_adapter(work: Path, tensors) -> None:
    """The other direction: an adapter made and saved by pyreft itself, for `reft import` to read.

    Loreft, Consreft, Direft (torch's orthogonal parametrization, moved off its init) and Noreft,
    with random weights, applied at f1+l1 with tied weights; its logits are saved beside it.
    """
    model = load_base(work)
    kinds = [
        (0, pyreft.LoreftIntervention),
        (1, pyreft.ConsreftIntervention),
        (2, pyreft.DireftIntervention),
        (1, pyreft.NoreftIntervention),
    ]
    hidden = model.config.hidden_size
    torch.manual_seed(3)
    representations = [
        {
            "layer": layer,
            "component": "block_output",
            "low_rank_dimension": 4,
            "intervention": cls(
                embed_dim=hidden, low_rank_dimension=4, add_bias=False, dtype=torch.float32
            ),
        }
        for layer, cls in kinds
    ]
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=representations))
    reft_model.set_device("cpu")
    with torch.no_grad():
        for name, param in reft_model.interventions.named_parameters():
            noise = torch.randn_like(param) * 0.2
            if name.endswith("original"):  # training never moves its ±1 diagonal
                noise = noise.tril(-1)
            param.add_(noise)
    length = tensors["input_ids"].shape[1]
    rows = tensors["input_ids"].shape[0]
    locations = [[[0, length - 1]] * rows for _ in kinds]
    logits = run(reft_model, tensors, locations)
    reft_model.save(str(work / "pyreft-made"))
    save_file({"logits": logits.contiguous()}, work / "pyreft-made-logits.safetensors")
    print("saved a pyreft-made adapter (Loreft, Consreft, Direft, Noreft) for reft import")


def main() -> None:
    work = Path(sys.argv[1])
    spec = json.loads((work / "cases.json").read_text())
    tolerance = spec["tolerance"]
    tensors = load_file(work / "tensors.safetensors")
    print(f"pyreft {getattr(pyreft, '__version__', '0.1.0')}, torch {torch.__version__}")

    with torch.no_grad():
        plain = load_base(work)(tensors["input_ids"], attention_mask=tensors["attention_mask"])
    base_diff = (plain.logits - tensors["base_logits"]).abs().max().item()
    print(f"base model (no adapter), transformers 4.45.1 vs reft's: max |diff| {base_diff:.3e}")

    worst, failures = 0.0, []
    for case in spec["cases"]:
        name, folder = case["name"], work / case["folder"]
        locations = [tensors[f"{name}_{group}"].tolist() for group in case["groups"]]
        model = load_base(work)
        how, as_loaded = "pyreft.ReftModel.load", "n/a"
        try:
            reft_model = pyreft.ReftModel.load(str(folder), model)
            reft_model.set_device("cpu")
            try:
                logits = run(reft_model, tensors, locations)
                as_loaded = f"{(logits - tensors[f'{name}_logits']).abs().max().item():.3e}"
            except RuntimeError as err:
                as_loaded = f"fails ({str(err).splitlines()[0]})"
        except KeyError as err:
            how = f"get_reft_model + load_state_dict (ReftModel.load raised KeyError {err})"
            model = load_base(work)
            reft_model = build_by_hand(folder, model)
            reft_model.set_device("cpu")
        if how == "pyreft.ReftModel.load":
            bf16 = pyreft.ReftModel.load(str(folder), load_base(work, torch.bfloat16))
            bf16.set_device("cpu")
            logits = run(bf16, tensors, locations).float()
            bf16_diff = (logits - tensors[f"{name}_bf16_logits"]).abs().max().item()
            as_loaded += f"; on a bfloat16 model, as loaded: {bf16_diff:.3e} vs reft in bfloat16"
        reload_fp32(reft_model, folder)
        diff = (run(reft_model, tensors, locations) - tensors[f"{name}_logits"]).abs().max().item()
        worst = max(worst, diff)
        status = "ok" if diff <= tolerance else "FAIL"
        print(f"{name}: {status} max |diff| {diff:.3e} after fp32 reload; via {how}")
        effect = (tensors[f"{name}_logits"] - tensors["base_logits"]).abs().max().item()
        print(f"  as ReftModel.load leaves it (bf16 W, b): {as_loaded}")
        print(f"  the adapter's own effect on the logits (reft vs base): {effect:.3e}")
        if diff > tolerance:
            failures.append(name)
    print(f"worst max |diff| {worst:.3e} (tolerance {tolerance:g})")
    make_pyreft_adapter(work, tensors)
    if failures:
        print(f"FAILED: {', '.join(failures)}")
        sys.exit(1)
    print("parity: ok")


if __name__ == "__main__":
    main()
