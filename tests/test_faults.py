"""Fault injection through the `reft` command: each case must exit 2 with one line on stderr that
names what is wrong and what to do, and leave every file that was there byte-identical."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir

ROWS = [{"prompt": f"say {w}", "response": f"{w} {w}!"} for w in "abcdefgh"]


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by relative path, with its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    tiny_model_dir(root / "model", max_position_embeddings=64)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = {
        "model": {"name_or_path": str(root / "model")},
        "data": {"dataset": str(root / "train.jsonl"), "template": "{prompt}:"},
        "intervention": {"layers": [0, 2], "rank": 2, "positions": "f1+l1"},
        "train": {"learning_rate": 0.01, "max_steps": 2, "logging_steps": 1, "seed": 3},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    adapter = root / "adapter"
    done = reft("train", str(root / "cfg.yaml"), f"train.output_dir={adapter}")
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def one_line_error(result, *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    # library warnings (a FutureWarning from transformers) may come first; ours is the last line
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    lines = errors
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_training_into_a_folder_of_the_users_files(world, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "README.md").write_text("# mine\n")
    (out / "loss_curve.png").write_bytes(b"mine")
    before = digest(tmp_path)
    result = reft("train", str(world / "cfg.yaml"), "train.output_dir=.", cwd=out)
    one_line_error(result, "is not empty and holds no reft run", "train.overwrite_output_dir=true")
    assert digest(tmp_path) == before and sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "loss_curve.png",
    ]


def test_training_into_a_file(world, tmp_path):
    (tmp_path / "f").write_text("x")
    before = digest(tmp_path)
    result = reft("train", str(world / "cfg.yaml"), f"train.output_dir={tmp_path / 'f'}")
    one_line_error(result, str(tmp_path / "f"), "is a file, not a folder")
    assert digest(tmp_path) == before


def test_training_on_non_utf8_data(world, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    before = digest(tmp_path)
    result = reft(
        "train",
        str(world / "cfg.yaml"),
        f"data.dataset={data}",
        f"train.output_dir={tmp_path / 'o'}",
    )
    one_line_error(result, f"{data}:1: not UTF-8")
    assert digest(tmp_path) == before and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response"\n', "bad.jsonl:2: bad JSON"),
        ('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": null}\n', "row 1 "),
    ],
)
def test_training_on_a_malformed_row(world, tmp_path, text, needle):
    data = tmp_path / "bad.jsonl"
    data.write_text(text)
    override = f"data.dataset={data}"
    result = reft("train", str(world / "cfg.yaml"), override, f"train.output_dir={tmp_path / 'o'}")
    one_line_error(result, needle)


def test_weights_blown_up_by_the_learning_rate(world, tmp_path):
    out = tmp_path / "o"
    result = reft(
        "train", str(world / "cfg.yaml"), "train.learning_rate=1e30", f"train.output_dir={out}"
    )
    one_line_error(result, "lower train.learning_rate")
    assert not list(out.glob("checkpoint-*")) and not (out / "reft_model.safetensors").exists()


def test_eval_into_an_existing_output(world, tmp_path):
    (tmp_path / "eval_results.json").write_text("{}")
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "piqa.jsonl").write_text("old\n")
    before = digest(tmp_path)
    result = reft(
        "eval", "--adapter", str(world / "adapter"), "--tasks", "boolq", "--output", str(tmp_path)
    )
    one_line_error(result, str(tmp_path), "--overwrite")
    assert digest(tmp_path) == before


def test_generate_a_prompt_longer_than_the_context(world, tmp_path):
    result = reft(
        "generate",
        "--adapter",
        str(world / "adapter"),
        "--prompt",
        "x" * 100,
        "--max-new-tokens",
        "1",
    )
    one_line_error(result, "tokens long", "context is 64")


def test_generate_input_rows_without_a_usable_prompt(world, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "hi"}\n{"prompt": 42}\n{"prompt": ""}\n{"q": "x"}\n')
    before = digest(tmp_path)
    args = ["generate", "--adapter", str(world / "adapter"), "--input", str(source)]
    args += ["--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "1"]
    one_line_error(reft(*args), f"{source}:2")
    assert digest(tmp_path) == before
    skipped = reft(*args, "--skip-bad-lines")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
