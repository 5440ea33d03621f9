"""Parity with real pyreft: export reft adapters with `reft export --format pyreft`, load them with
`pyreft.ReftModel.load` in pyreft's own environment, and compare outputs on the same inputs.

pyreft pins transformers 4.45.1, so it runs in a separate virtual environment (scripts/check_pyreft.sh
makes one). This driver runs in reft's environment:

1. builds a tiny Llama with a fixed seed and saves it with save_pretrained (both sides load it);
2. builds reft adapters with random weights (several intervention types, components, tied and
   untied weights), saves them, and exports each with the `reft export` CLI;
3. records the inputs, each adapter's positions and reft's logits;
4. runs bench/check_pyreft.py with pyreft's python, which loads each export with
   pyreft.ReftModel.load, runs the same inputs at the same positions, and reports the max difference.

    python bench/pyreft_parity.py --pyreft-python /tmp/pyreft-venv/bin/python [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from reft_cli.engine.adapter_config import InterventionConfig, ReftConfig
from reft_cli.engine.reft_model import get_reft_model

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-4
SEED = 0
# name → (sites as (layer, type, component, add_bias), positions, share_weights, rank)
CASES = {
    "tied_mixed": (
        [
            (0, "loreft", "block_output", False),
            (1, "orth_direft", "block_output", False),
            (2, "consreft", "block_output", False),
            (1, "lobireft", "mlp_output", False),
            (2, "loreft", "attention_output", False),
            (0, "loreft", "block_input", False),
        ],
        "f2+l2",
        True,
        4,
    ),
    "untied_loreft": (
        [(0, "loreft", "block_output", False), (2, "loreft", "block_output", False)],
        "f2+l3",
        False,
        3,
    ),
    "noreft_direft": (
        [(0, "noreft", "block_output", True), (2, "direft", "block_output", False)],
        "f1+l1",
        True,
        4,
    ),
}


def tiny_llama(folder: Path) -> None:
    torch.manual_seed(SEED)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=3,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def load_base(folder: Path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=dtype
    ).eval()


def build_adapter(base_dir: Path, name: str, out: Path) -> None:
    sites, positions, share, rank = CASES[name]
    config = ReftConfig(
        interventions=[
            InterventionConfig(layer, kind, component, rank, add_bias=bias)
            for layer, kind, component, bias in sites
        ],
        positions=positions,
        share_weights=share,
        base_model=str(base_dir),
    )
    torch.manual_seed(SEED + 1)
    reft = get_reft_model(load_base(base_dir), config)
    with torch.no_grad():  # move away from the init, as training would
        for param in reft.interventions.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    reft.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreft-python", required=True, help="python of the pyreft venv")
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pyreft-parity-"))
    if work.exists() and any(work.iterdir()):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    base_dir = work / "base"
    tiny_llama(base_dir)

    torch.manual_seed(SEED + 2)
    input_ids = torch.randint(0, 128, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    lengths = attention_mask.sum(dim=1)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
    with torch.no_grad():
        tensors["base_logits"] = load_base(base_dir)(input_ids, attention_mask).logits
    cases = []
    for name in CASES:
        native = work / f"{name}-reft"
        build_adapter(base_dir, name, native)
        exported = work / f"{name}-pyreft"
        command = ["export", "--adapter", str(native), "--format", "pyreft", "--out", str(exported)]
        subprocess.run([sys.executable, "-m", "reft_cli", *command], check=True)
        from reft_cli.engine.reft_model import ReftModel

        reft = ReftModel.from_pretrained(native, load_base(base_dir))
        positions = reft.positions_for(lengths, attention_mask)
        assert all(bool(p.mask.all()) for p in positions.values()), "inputs too short"
        with torch.no_grad():
            tensors[f"{name}_logits"] = reft(
                input_ids, attention_mask, prompt_lengths=lengths
            ).logits
        bf16 = ReftModel.from_pretrained(native, load_base(base_dir, torch.bfloat16))
        with torch.no_grad():  # pyreft's usual dtype, where its loader needs no help
            tensors[f"{name}_bf16_logits"] = bf16(
                input_ids, attention_mask, prompt_lengths=lengths
            ).logits.float()
        groups = list(positions)
        for group, where in positions.items():
            tensors[f"{name}_{group}"] = where.index
        sites = len(reft.reft_config.interventions)
        cases.append(
            {
                "name": name,
                "folder": exported.name,
                # pyreft's k-th intervention takes group k div sites (pyreft's untied order)
                "groups": [group for group in groups for _ in range(sites)],
            }
        )
    save_file({k: v.contiguous() for k, v in tensors.items()}, work / "tensors.safetensors")
    (work / "cases.json").write_text(json.dumps({"tolerance": TOLERANCE, "cases": cases}, indent=2))
    result = subprocess.run([args.pyreft_python, str(HERE / "check_pyreft.py"), str(work)])
    failed = result.returncode != 0
    if (work / "pyreft-made").is_dir():
        failed |= not check_import(work, base_dir, input_ids, attention_mask)
    print(f"work folder: {work}")
    sys.exit(1 if failed else 0)


def check_import(work: Path, base_dir: Path, input_ids, attention_mask) -> bool:
    """`reft import` of the adapter pyreft saved itself gives pyreft's logits."""
    from safetensors.torch import load_file

    from reft_cli.engine.reft_model import ReftModel

    imported = work / "pyreft-made-reft"
    command = ["import", str(work / "pyreft-made"), "--base-model", str(base_dir)]
    command += ["--out", str(imported), "--positions", "f1+l1", "--share-weights"]
    subprocess.run([sys.executable, "-m", "reft_cli", *command], check=True)
    reft = ReftModel.from_pretrained(imported, load_base(base_dir))
    with torch.no_grad():
        logits = reft(input_ids, attention_mask, prompt_lengths=attention_mask.sum(dim=1)).logits
    expected = load_file(work / "pyreft-made-logits.safetensors")["logits"]
    diff = (logits - expected).abs().max().item()
    status = "ok" if diff <= TOLERANCE else "FAIL"
    print(f"reft import of a pyreft-saved adapter: {status} max |diff| {diff:.3e} vs pyreft")
    return diff <= TOLERANCE


if __name__ == "__main__":
    main()
