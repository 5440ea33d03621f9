"""`reft train` and `reft configs` from the command line: dry runs, errors, and data parallelism."""

import json
import shutil
import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir

ROWS = [{"prompt": f"say {w}", "response": f"{w} {w}!"} for w in "abcdefghijklmnop"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_model_dir(root / "model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = {
        "model": {"name_or_path": str(root / "model")},
        "data": {"dataset": str(root / "train.jsonl"), "template": "{prompt}:"},
        "intervention": {"layers": [0, 2], "rank": 2, "positions": "f1+l1"},
        "train": {"learning_rate": 0.01, "max_steps": 4, "logging_steps": 1, "seed": 3},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    return root


def test_dry_run_shows_config_size_and_examples_then_exits(setup, tmp_path):
    out = tmp_path / "never"
    result = reft("train", str(setup / "cfg.yaml"), f"train.output_dir={out}", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resolved config" in result.stdout
    assert "trainable parameters: 260" in result.stdout
    assert "example 0" in result.stdout and "example 1" in result.stdout
    assert "say a:" in result.stdout
    assert not out.exists()


def test_config_problems_are_reported_together(setup):
    result = reft(
        "train", str(setup / "cfg.yaml"), "train.learning_rat=1", "train.max_steps=-5", "--dry-run"
    )
    assert result.returncode == 2
    assert "2 problems" in result.stderr
    assert "did you mean train.learning_rate?" in result.stderr
    assert "train.max_steps: -5 is not allowed" in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.dataset=/nowhere/x.jsonl", "/nowhere/x.jsonl"),
        ("data.template={question}", "question"),
        ("data.max_length=3", "max_length"),
        ("train.learning_rate=-0.1", "train.learning_rate: -0.1 is not allowed"),
    ],
)
def test_bad_input_is_one_clear_line(setup, tmp_path, override, message):
    result = reft("train", str(setup / "cfg.yaml"), override, f"train.output_dir={tmp_path / 'o'}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "o" / "reft_config.json").exists()


def test_missing_config_file_is_one_clear_line(tmp_path):
    result = reft("train", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_configs_list_show_and_copy(tmp_path):
    listed = reft("configs", "list")
    assert listed.returncode == 0 and "emoji" in listed.stdout
    shown = reft("configs", "show", "emoji")
    assert "smollm2-135m-instruct" in shown.stdout
    copied = reft("configs", "copy", "emoji", str(tmp_path))
    assert copied.returncode == 0
    assert (tmp_path / "emoji.yaml").read_text() == shown.stdout.rstrip("\n") + "\n"
    again = reft("configs", "copy", "emoji", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "choose one of" in reft("configs", "show", "nope").stderr


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_processes_train_the_same_adapter_as_one(setup, tmp_path):
    cfg = str(setup / "cfg.yaml")
    one = reft(
        "train", cfg, f"train.output_dir={tmp_path / 'one'}", "train.per_device_train_batch_size=4"
    )
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run(
        [
            "torchrun",
            "--nproc_per_node",
            "2",
            "-m",
            "reft_cli",
            "train",
            cfg,
            f"train.output_dir={tmp_path / 'two'}",
            "train.per_device_train_batch_size=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("reft train") == 1  # only the main process reports
    a = load_file(tmp_path / "one" / "reft_model.safetensors")
    b = load_file(tmp_path / "two" / "reft_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


def torchrun_train(cfg, *overrides) -> subprocess.CompletedProcess:
    command = ["torchrun", "--nproc_per_node", "2", "-m", "reft_cli", "train", str(cfg), *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_two_processes_resume_exactly_with_dropout(setup, tmp_path):
    # 15 rows in steps of 4: each epoch's last step gives process 0 two rows and process 1 one,
    # so the processes draw different numbers of dropout masks and their random streams part.
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:15]))
    common = [
        f"data.dataset={tmp_path / 'odd.jsonl'}",
        "intervention.dropout=0.3",
        "train.per_device_train_batch_size=2",
        "train.max_steps=8",
        "train.save_steps=5",
    ]
    full = torchrun_train(setup / "cfg.yaml", *common, f"train.output_dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stdout + full.stderr
    resumed = torchrun_train(
        setup / "cfg.yaml",
        *common,
        f"train.output_dir={tmp_path / 'resumed'}",
        f"train.resume_from_checkpoint={tmp_path / 'full' / 'checkpoint-5'}",
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "full" / "reft_model.safetensors")
    b = load_file(tmp_path / "resumed" / "reft_model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
