"""`reft sweep`: trials on a tiny model, resuming from the storage, failed trials recorded, the
best config runnable, and no data load ever asked for the test rows."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import datasets
import optuna
import pytest
import yaml
from rich.console import Console

from reft_cli.config.reader import load_config
from reft_cli.data import examples
from reft_cli.errors import ReftError
from reft_cli.reproduce.sweep import (
    SweepOptions,
    _reporter,
    load_space,
    objective_metric,
    run_sweep,
)
from reft_cli.training.trainer import Trainer
from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir

SPACE = {
    "train.learning_rate": {"low": "1e-3", "high": "1e-1", "log": True},
    "intervention.rank": {"choices": [1, 2]},
}


def _rows(n: int, tag: str) -> list[dict[str, str]]:
    return [{"prompt": f"{tag} q{i}", "response": f"a{i % 3}"} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sweep")
    model = tiny_model_dir(root / "model")
    splits = {"train": 16, "validation": 8, "test": 8}
    data = datasets.DatasetDict(
        {name: datasets.Dataset.from_list(_rows(n, name)) for name, n in splits.items()}
    )
    data.save_to_disk(str(root / "data"))
    config = {
        "model": {"name_or_path": str(model)},
        "data": {"dataset": str(root / "data"), "eval_split": "selection of validation"},
        "intervention": {"layers": [1], "positions": "l1"},
        "train": {"max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 1000},
    }
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


def _space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def test_cli_sweep_writes_best_report_plots_and_resumes(setup, tmp_path):
    _, config = setup
    space, out = _space(tmp_path / "space.yaml", SPACE), tmp_path / "out"
    # pruning is tested on its own below; here every trial runs to the end
    args = ["sweep", str(config), "--space", str(space), "--out", str(out), "--no-prune"]
    first = reft(*args, "--trials", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    stamp = (out / "trial-0" / "reft_model.safetensors").stat().st_mtime_ns
    second = reft(*args, "--trials", "3")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 trial(s) so far, 1 to run" in second.stdout
    assert (out / "trial-0" / "reft_model.safetensors").stat().st_mtime_ns == stamp  # not rerun
    report = (out / "sweep.md").read_text()
    assert [int(n) for n in re.findall(r"^\| (\d+) \|", report, re.M)] == [0, 1, 2]
    assert report.count("| complete |") == 3
    assert (out / "objective.png").stat().st_size > 0 and (out / "importance.png").is_file()
    best = load_config(out / "best.yaml")
    study = optuna.load_study(study_name="base", storage=f"sqlite:///{out / 'study.db'}")
    assert best.intervention.rank == study.best_params["intervention.rank"]
    assert best.train.learning_rate == pytest.approx(study.best_params["train.learning_rate"])
    assert best.train.output_dir == str(out / "best")
    dry = reft("train", str(out / "best.yaml"), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr


def test_failed_trials_are_recorded_and_test_rows_never_loaded(setup, tmp_path, monkeypatch):
    _, config = setup
    splits: list[str] = []
    load_rows, eval_rows = examples.load_rows, examples._eval_rows
    monkeypatch.setattr(examples, "load_rows", lambda s, c, split, **k: splits.append(split) or load_rows(s, c, split, **k))  # fmt: skip
    monkeypatch.setattr(examples, "_eval_rows", lambda s, c, split, seed: splits.append(split) or eval_rows(s, c, split, seed))  # fmt: skip
    space = _space(tmp_path / "space.yaml", {"intervention.rank": {"choices": [0, 1, 2]}})
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    out.mkdir()
    study = optuna.create_study(study_name="base", storage=storage)
    for rank in (0, 2, 1):  # the first trial's config is invalid (rank 0)
        study.enqueue_trial({"intervention.rank": rank})
    run_sweep(SweepOptions(config, space, out, trials=3), Console(quiet=True))
    study = optuna.load_study(study_name="base", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "intervention.rank" in study.trials[0].user_attrs["error"]
    assert "| fail |" in (out / "sweep.md").read_text()
    assert not (out / "importance.png").exists()  # one parameter: nothing to compare
    assert splits and set(splits) <= {"train", "selection of validation", "validation"}
    assert not any("test" in s for s in splits)


def test_space_and_objective_errors_are_one_line(setup, tmp_path, monkeypatch):
    _, config = setup
    bad = _space(tmp_path / "bad.yaml", {"train.learnig_rate": {"low": 1, "high": 2}})
    with pytest.raises(
        ReftError, match=r"train.learnig_rate: unknown key; did you mean train.learning_rate\?"
    ):
        load_space(bad)
    reserved = _space(tmp_path / "r.yaml", {"data.eval_split": {"choices": ["test"]}})
    with pytest.raises(ReftError, match="cannot be searched"):
        load_space(reserved)
    on_test = tmp_path / "test.yaml"
    on_test.write_text(config.read_text().replace("selection of validation", "test of validation"))
    space = _space(tmp_path / "s.yaml", SPACE)
    with pytest.raises(ReftError, match="reported test split"):
        run_sweep(SweepOptions(on_test, space, tmp_path / "o"), Console(quiet=True))
    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(ReftError, match=r"pip install 'reft\[sweep\]'"):
        run_sweep(SweepOptions(config, space, tmp_path / "o"), Console(quiet=True))


def test_a_trial_trailing_the_median_is_pruned_and_stops_its_training(setup, tmp_path):
    _, config = setup
    study = optuna.create_study(
        direction="minimize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    first = study.ask()
    for step in (1, 2):
        _reporter(first, "eval_loss")(step, {"eval_loss": 0.5})
    study.tell(first, 0.5)
    # the second trial's training evaluates at every step; every value trails the median, but
    # its first evaluation (maybe still in warmup) never stops it
    run = load_config(
        config,
        [f"train.output_dir={tmp_path / 'trial'}", "train.eval_steps=1", "train.max_steps=3"],
    )
    second, seen = study.ask(), []
    report = _reporter(second, "eval_loss")

    def on_eval(step, metrics):
        seen.append(step)
        report(step, {"eval_loss": 0.5 + 10.0 * step})

    with pytest.raises(optuna.TrialPruned, match="at step 2"):
        Trainer(run, Console(quiet=True), on_eval=on_eval).train()
    assert seen == [1, 2]  # no step after the pruned evaluation ran
    assert second.user_attrs["pruned_at_step"] == 2
    # a trial at the median is kept
    third = study.ask()
    report = _reporter(third, "eval_loss")
    for step in (1, 2):
        report(step, {"eval_loss": 0.5})
    assert not third.should_prune()


def test_the_trainer_reports_every_evaluation_to_its_callback(setup, tmp_path):
    _, config = setup
    run = load_config(
        config,
        [f"train.output_dir={tmp_path / 'run'}", "train.eval_steps=1", "train.max_steps=3"],
    )
    seen = []
    Trainer(run, Console(quiet=True), on_eval=lambda step, m: seen.append((step, m))).train()
    logged = [
        json.loads(line)
        for line in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()
    ]
    evals = [e for e in logged if "eval_loss" in e]
    assert [s for s, _ in seen] == [e["step"] for e in evals] == [1, 2, 3]
    assert [m["eval_loss"] for _, m in seen] == pytest.approx([e["eval_loss"] for e in evals])


def test_the_objective_is_selection_accuracy_for_multiple_choice_data(setup):
    _, config = setup
    assert objective_metric(load_config(config)) == ("eval_loss", False)
    mc = load_config(config, ["data.mc_format=loglik"])
    assert objective_metric(mc) == ("eval_accuracy", True)
    chosen = load_config(config, ["data.mc_format=loglik", "train.metric_for_best_model=loss"])
    assert objective_metric(chosen) == ("eval_loss", False)
