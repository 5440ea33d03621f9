"""`reft eval`'s generation length: null means each task's paper length; a number wins everywhere."""

import json

import pytest
import yaml
from rich.console import Console

from reft_cli.config.reader import load_config
from reft_cli.evaluation import evaluate
from reft_cli.evaluation.evaluate import EvalOptions, run_eval
from reft_cli.evaluation.tasks import TASKS
from tests.conftest import tiny_model_dir


def test_each_task_has_its_papers_generation_length():
    """REFERENCE.md: commonsense 32, math 512; pyreft's task_config: GSM8K 256, Alpaca-Eval 2048."""
    lengths = {name: task.max_new_tokens for name, task in TASKS.items() if task.kind != "glue"}
    expected = {"commonsense": 32, "math": 512, "gsm8k": 256, "alpaca_eval": 2048}
    assert lengths == {name: expected[TASKS[name].kind] for name in lengths}


def test_the_configs_default_is_null():
    assert load_config(None).eval.max_new_tokens is None


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A config naming a tiny base model and two local task copies with different defaults."""
    root = tmp_path_factory.mktemp("lengths")
    boolq = root / "boolq.jsonl"
    boolq.write_text(json.dumps({"question": "is it", "answer": True}) + "\n")
    gsm8k = root / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "1+1?", "answer": "one and one #### 2"}) + "\n")
    settings = {
        "model": {"name_or_path": str(tiny_model_dir(root / "model"))},
        "eval": {"tasks": [f"boolq={boolq}", f"gsm8k={gsm8k}"]},
    }
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def budgets(monkeypatch):
    """The max_new_tokens each task's generation was asked for (nothing is generated)."""
    seen = []

    def fake_generate(subject, ids, batch_size, max_new_tokens, advance=None):
        seen.append(max_new_tokens)
        return [""] * len(ids)

    monkeypatch.setattr(evaluate, "generate_texts", fake_generate)
    return seen


@pytest.mark.parametrize(
    ("overrides", "option", "expected"),
    [
        ([], None, [32, 256]),  # null: each task's own
        (["eval.max_new_tokens=5"], None, [5, 5]),  # the config's number, for every task
        (["eval.max_new_tokens=5"], 7, [7, 7]),  # --max-new-tokens over the config
        ([], 9, [9, 9]),
    ],
)
def test_null_uses_each_tasks_length_and_a_number_overrides_all(
    config, budgets, tmp_path, overrides, option, expected
):
    options = EvalOptions(
        config=config, overrides=overrides, no_adapter=True, max_new_tokens=option, output=tmp_path
    )
    report = run_eval(options, Console(quiet=True))
    assert budgets == expected
    recorded = [report["tasks"][name]["max_new_tokens"] for name in ("boolq", "gsm8k")]
    assert recorded == expected and report["max_new_tokens"] == (
        option or (5 if overrides else None)
    )
