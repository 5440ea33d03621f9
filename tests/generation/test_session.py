"""`reft generate` from the command line: prompts, files, mixed adapters, and bad input."""

import json
import subprocess
import sys

import pytest
import torch

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine.base_models import load_model
from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir


def make_adapter(model_dir, out, seed, layers=(0, 2), positions="l1"):
    base = load_model(str(model_dir))
    config = ReftConfig.for_layers(
        list(layers), 3, rank=2, positions=positions, base_model=str(model_dir)
    )
    config.prompt_template = "{prompt}:"
    model = get_reft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=2.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    model_dir = tiny_model_dir(root / "model")
    return {
        "model": model_dir,
        "a": make_adapter(model_dir, root / "a", seed=1),
        "b": make_adapter(model_dir, root / "b", seed=2, layers=(1,), positions="f1+l1"),
    }


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


GEN = ["--max-new-tokens", "6"]


def test_prompt_with_compare_shows_both_answers(adapters):
    result = reft(
        "generate", "--adapter", str(adapters["a"]), "--prompt", "hello", "--compare", *GEN
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default" in result.stdout and "base model" in result.stdout


def test_file_rows_keep_their_fields_and_gain_a_generation(adapters, tmp_path):
    source = write_rows(
        tmp_path / "in.jsonl", [{"prompt": "hi", "id": 7}, {"prompt": "yo", "id": 8}]
    )
    target = tmp_path / "out.jsonl"
    result = reft(
        "generate",
        "--adapter",
        str(adapters["a"]),
        "--input",
        str(source),
        "--output",
        str(target),
        *GEN,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(target)
    assert [r["id"] for r in rows] == [7, 8]
    assert all(isinstance(r["generation"], str) for r in rows)


def test_stdin_in_and_stdout_out_give_the_same_rows_as_files(adapters, tmp_path):
    rows = [{"prompt": "hi", "id": 7}, {"prompt": "yo", "id": 8}]
    source = write_rows(tmp_path / "in.jsonl", rows)
    target = tmp_path / "out.jsonl"
    args = ("generate", "--adapter", str(adapters["a"]), *GEN)
    assert reft(*args, "--input", str(source), "--output", str(target)).returncode == 0
    piped = subprocess.run(
        [sys.executable, "-m", "reft_cli", *args, "--input", "-", "--output", "-"],
        input=source.read_text(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line) for line in piped.stdout.splitlines()] == read_rows(target)


def test_mixed_adapter_file_equals_each_adapter_alone(adapters, tmp_path):
    prompts = ["abc", "hello there", "xy", "zzz top"]
    names = ["a", "b", "base", "a"]
    source = write_rows(
        tmp_path / "mixed.jsonl",
        [{"prompt": p, "adapter": n} for p, n in zip(prompts, names, strict=True)],
    )
    specs = ["--adapter", f"a={adapters['a']}", "--adapter", f"b={adapters['b']}"]
    mixed = tmp_path / "mixed_out.jsonl"
    result = reft("generate", *specs, "--input", str(source), "--output", str(mixed), *GEN)
    assert result.returncode == 0, result.stdout + result.stderr
    got = [r["generation"] for r in read_rows(mixed)]
    for i, (prompt, name) in enumerate(zip(prompts, names, strict=True)):
        single = write_rows(tmp_path / f"s{i}.jsonl", [{"prompt": prompt, "adapter": name}])
        out = tmp_path / f"s{i}_out.jsonl"
        assert (
            reft("generate", *specs, "--input", str(single), "--output", str(out), *GEN).returncode
            == 0
        )
        assert read_rows(out)[0]["generation"] == got[i], (prompt, name)
    assert len(set(got)) > 1


def test_bad_line_reports_its_number_or_is_skipped(adapters, tmp_path):
    source = write_rows(tmp_path / "in.jsonl", [{"prompt": "hi"}, "{broken", {"prompt": "ok"}])
    target = tmp_path / "out.jsonl"
    stop = reft(
        "generate",
        "--adapter",
        str(adapters["a"]),
        "--input",
        str(source),
        "--output",
        str(target),
        *GEN,
    )
    assert stop.returncode == 2 and f"{source}:2: bad JSON line" in stop.stderr
    assert not target.exists()
    go_on = reft(
        "generate",
        "--adapter",
        str(adapters["a"]),
        "--input",
        str(source),
        "--output",
        str(target),
        "--skip-bad-lines",
        *GEN,
    )
    assert go_on.returncode == 0 and len(read_rows(target)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "  "], "empty prompt"),
        (["--prompt", "x", "--chat"], "choose one of --prompt"),
    ],
)
def test_bad_requests_are_one_line_errors(adapters, args, message):
    result = reft("generate", "--adapter", str(adapters["a"]), *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_corrupt_and_mismatched_adapters_are_clear(adapters, tmp_path):
    missing = reft("generate", "--adapter", str(tmp_path / "none"), "--prompt", "x")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "reft_config.json").write_text((adapters["a"] / "reft_config.json").read_text())
    (corrupt / "reft_model.safetensors").write_bytes(b"garbage")
    broken = reft("generate", "--adapter", str(corrupt), "--prompt", "x")
    assert broken.returncode == 2 and "corrupt" in broken.stderr
    other = tiny_model_dir(tmp_path / "other", num_layers=4)
    mismatch = reft(
        "generate", "--adapter", str(adapters["a"]), "--base-model", str(other), "--prompt", "x"
    )
    assert (
        mismatch.returncode == 2 and "3 layers, but the base model has 32 and 4" in mismatch.stderr
    )
