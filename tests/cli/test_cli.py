"""The `reft` command: help, the engine smoke run, and one-line errors."""

import json
import os
import re
import subprocess
import sys

import pytest

from reft_cli.engine.folder_names import CONFIG_NAME, LOG_NAME, WEIGHTS_NAME
from tests.conftest import needs_smollm2


def reft(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess with a wide terminal, so rich does not wrap what tests read."""
    return subprocess.run(
        [sys.executable, "-m", "reft_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_help_lists_the_commands():
    result = reft("--help")
    assert result.returncode == 0
    assert "smoke" in result.stdout


@needs_smollm2
def test_smoke_trains_saves_and_reloads(tmp_path):
    out = tmp_path / "run"
    result = reft("smoke", "--steps", "3", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()
    assert "reproduces outputs" in result.stdout and "yes" in result.stdout


@needs_smollm2
def test_smoke_reports_the_loss_drop_its_training_log_shows(tmp_path):
    out = tmp_path / "run"
    result = reft("smoke", "--steps", "5", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    logged = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    losses = [entry["loss"] for entry in logged if "loss" in entry]
    # Training lowered the loss by more than the step-to-step noise: five steps at the default
    # learning rate take it down ~11%; without learning (lr 1e-9) it stays within 0.1%.
    assert len(losses) == 5 and losses[-1] < 0.95 * losses[0]
    shown = re.search(r"loss \(first step → last step\)\W+([\d.]+) → ([\d.]+)", result.stdout)
    assert shown is not None, result.stdout
    first, last = float(shown.group(1)), float(shown.group(2))
    assert first == pytest.approx(losses[0], abs=1e-4) and last == pytest.approx(
        losses[-1], abs=1e-4
    )
    assert last < first


@needs_smollm2
def test_smoke_refuses_to_overwrite_an_adapter(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{}")
    result = reft("smoke", "--out", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {tmp_path} already holds an adapter; choose another --out or pass --overwrite"
    ]
    assert (tmp_path / CONFIG_NAME).read_text() == "{}"


@pytest.mark.parametrize("positions", ["f-1", "x3"])
def test_bad_positions_is_a_one_line_error(tmp_path, positions):
    result = reft(
        "smoke",
        "--positions",
        positions,
        "--out",
        str(tmp_path / "o"),
        "--model",
        "nonexistent/model-xyz",
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


def test_help_paragraphs_wrap_once_at_the_terminals_width():
    """A docstring paragraph wrapped in the source must not break again mid-line in --help."""
    from typer.testing import CliRunner

    from reft_cli.cli.app import app

    out = CliRunner().invoke(app, ["reproduce", "--help"], env={"COLUMNS": "200"}).output
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.endswith("so running it again picks up where it stopped.") for line in lines)
    assert "reft reproduce recipes/offline-glue.yaml" in lines  # examples keep their lines


def test_help_texts_keep_their_brackets():
    """rich reads `[word]` in a help text as a markup tag and drops it: no option's help loses text."""
    import click
    import typer.main
    from rich.markup import render

    from reft_cli.cli.app import app

    lost = []
    for name, command in typer.main.get_command(app).commands.items():
        group = isinstance(command, click.Group)
        for sub_name, sub in command.commands.items() if group else [(name, command)]:
            for param in sub.params:
                text = getattr(param, "help", None) or ""
                if render(text).plain != text.replace("\\[", "["):
                    lost.append(f"{sub_name} {param.name}: {text}")
    assert lost == []
