"""`reft eval` on tiny models: outputs, batching, adapter/config resolution, and bad input."""

import hashlib
import json
import shutil

import pytest
import torch
import yaml
from rich.console import Console

from reft_cli import ReftConfig, ReftModel, get_reft_model
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.loading import LoadedModel
from reft_cli.errors import ReftError
from reft_cli.evaluation.evaluate import EvalOptions, plan_eval, run_eval
from reft_cli.evaluation.predict import generate_texts
from tests.cli.test_cli import reft
from tests.conftest import tiny_model_dir

QUIET = Console(quiet=True)
QUESTIONS = ["is the sky blue", "can fish fly", "is water wet and also quite cold in winter", "x"]
BOOLQ = [
    {
        "instruction": f"Please answer the following question with true or false, question: {q}?"
        "\n\nAnswer format: true/false",
        "input": "",
        "output": f"the correct answer is {a}",
        "answer": a,
    }
    for q, a in zip(QUESTIONS, ["true", "false", "true", "false"], strict=True)
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_adapter(model_dir, out, task_type="causal_lm", template="commonsense", **run):
    """A tiny adapter with strong random weights, and the training config `reft train` writes."""
    base = load_model(str(model_dir), task_type=task_type)
    config = ReftConfig.for_layers(
        [0, 2],
        3,
        rank=2,
        positions="f1+l1",
        base_model=str(model_dir),
        task_type=task_type,
        prompt_template=template,
    )
    model = get_reft_model(base, config)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=1.0)
    model.save_pretrained(out)
    settings = {
        "model": {"name_or_path": str(model_dir), "task_type": task_type},
        "data": {"template": template},
        "train": {"output_dir": str(out)},
        "eval": {"max_new_tokens": 3},
    }
    for section, values in run.items():
        settings.setdefault(section, {}).update(values)
    (out / "training_config.yaml").write_text(yaml.safe_dump(settings))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model_dir = tiny_model_dir(root / "model")
    adapter = save_adapter(model_dir, root / "adapter")
    data = write_jsonl(root / "boolq.jsonl", BOOLQ)
    return root, model_dir, adapter, data


def evaluate(**options):
    return run_eval(EvalOptions(**options), QUIET)


def read_predictions(folder, task):
    return [json.loads(line) for line in (folder / "predictions" / f"{task}.jsonl").open()]


# ---------------------------------------------------------------------------- outputs


def test_results_and_predictions_are_written_and_consistent(setup, tmp_path):
    _, model_dir, adapter, data = setup
    report = evaluate(
        adapter=adapter, tasks=[f"boolq={data}"], limit=3, batch_size=2, output=tmp_path
    )
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved == report
    task = saved["tasks"]["boolq"]
    assert task["num_examples"] == 3 and task["metric"] == "accuracy"
    assert (
        saved["adapter"]["weights_sha256"]
        == hashlib.sha256((adapter / "reft_model.safetensors").read_bytes()).hexdigest()
    )
    assert saved["config"]["path"] == str((adapter / "training_config.yaml").resolve())
    assert saved["base_model"] == str(model_dir) and saved["max_new_tokens"] == 3
    predictions = read_predictions(tmp_path, "boolq")
    assert [p["prompt"] for p in predictions] == [r["instruction"] + "\n" for r in BOOLQ[:3]]
    # Three new tokens cannot hold `the correct answer is `: every row parses to nothing and is
    # wrong (test_the_score_is_the_share_of_rows_whose_parsed_answer_matches has right rows).
    assert all(p["generation"] for p in predictions)
    for p, row in zip(predictions, BOOLQ, strict=False):
        assert (p["parsed"], p["gold"], p["correct"]) == (None, row["answer"], False)
    assert task["score"] == 0.0


def test_the_score_is_the_share_of_rows_whose_parsed_answer_matches(setup, tmp_path, monkeypatch):
    _, _, adapter, data = setup
    generations = [
        "the correct answer is true",  # gold true: right
        "the correct answer is true",  # gold false: wrong
        "the correct answer is true.",  # gold true, but not an exact match: wrong
        "so, the correct answer is false",  # gold false: right
    ]
    monkeypatch.setattr(
        "reft_cli.evaluation.evaluate.generate_texts",
        lambda subject, ids, batch_size, max_new, advance: generations[: len(ids)],
    )
    report = evaluate(adapter=adapter, tasks=[f"boolq={data}"], output=tmp_path)
    predictions = read_predictions(tmp_path, "boolq")
    assert [(p["parsed"], p["gold"], p["correct"]) for p in predictions] == [
        ("true", "true", True),
        ("true", "false", False),
        ("true.", "true", False),
        ("false", "false", True),
    ]
    assert report["tasks"]["boolq"]["num_examples"] == 4
    assert report["tasks"]["boolq"]["score"] == 0.5


def test_an_eval_run_reads_the_adapter_record_once(setup, tmp_path, monkeypatch):
    _, _, adapter, data = setup
    reads = []
    real = ReftConfig.load.__func__
    monkeypatch.setattr(
        ReftConfig, "load", classmethod(lambda cls, d: reads.append(d) or real(cls, d))
    )
    evaluate(adapter=adapter, tasks=[f"boolq={data}"], limit=1, output=tmp_path)
    assert reads == [adapter]


def test_default_output_folder_is_inside_the_adapter(setup):
    _, _, adapter, data = setup
    evaluate(adapter=adapter, tasks=[f"boolq={data}"], limit=1)
    assert (adapter / "eval" / "eval_results.json").is_file()
    shutil.rmtree(adapter / "eval")


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(setup):
    _, model_dir, adapter, _ = setup
    model = ReftModel.from_pretrained(adapter).eval()
    subject = LoadedModel(model, load_tokenizer(str(model_dir)))
    prompts = [subject.tokenizer(r["instruction"] + "\n")["input_ids"] for r in BOOLQ]
    assert len({len(p) for p in prompts}) == len(prompts)  # lengths differ, so batches pad
    batched = generate_texts(subject, prompts, batch_size=4, max_new_tokens=5)
    for prompt, text in zip(prompts, batched, strict=True):
        ids = torch.tensor([prompt])
        alone = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert text == subject.tokenizer.decode(alone[0, len(prompt) :], skip_special_tokens=True)


def test_no_adapter_evaluates_the_base_model(setup, tmp_path):
    _, model_dir, adapter, data = setup
    options = {"tasks": [f"boolq={data}"], "limit": 2, "max_new_tokens": 6}
    edited = evaluate(adapter=adapter, output=tmp_path / "a", **options)
    base = evaluate(adapter=adapter, no_adapter=True, output=tmp_path / "b", **options)
    assert edited["adapter"] is not None and base["adapter"] is None
    assert base["base_model"] == str(model_dir)
    generations = [
        [p["generation"] for p in read_predictions(tmp_path / name, "boolq")] for name in "ab"
    ]
    assert generations[0] != generations[1]  # the strong random edit changes the output


def test_config_names_the_adapter_through_its_output_dir(setup, tmp_path):
    _, model_dir, adapter, data = setup
    config = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"template": "commonsense"},
        "train": {"output_dir": str(adapter)},
        "eval": {"tasks": [f"boolq={data}"], "limit": 2, "max_new_tokens": 2, "split": "test[1:]"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = plan_eval(EvalOptions(config=path))
    assert plan.adapter == adapter and plan.split == "test[1:]" and plan.max_new_tokens == 2
    report = evaluate(config=path, output=tmp_path / "out")
    assert report["tasks"]["boolq"]["num_examples"] == 2
    prompts = [p["prompt"] for p in read_predictions(tmp_path / "out", "boolq")]
    assert prompts == [r["instruction"] + "\n" for r in BOOLQ[1:3]]


def test_checkpoint_folders_use_their_runs_training_config(setup, tmp_path):
    _, _, adapter, data = setup
    checkpoint = tmp_path / "run" / "checkpoint-4"
    shutil.copytree(adapter, checkpoint, ignore=shutil.ignore_patterns("training_config.yaml"))
    (tmp_path / "run" / "training_config.yaml").write_text(
        (adapter / "training_config.yaml").read_text()
    )
    plan = plan_eval(EvalOptions(adapter=checkpoint, tasks=[f"boolq={data}"]))
    assert plan.config_path == tmp_path / "run" / "training_config.yaml"
    assert plan.max_new_tokens == 3 and plan.output == checkpoint / "eval"


# ---------------------------------------------------------------------------- classification


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    model_dir = tiny_model_dir(root / "bert", "bert")
    adapter = save_adapter(model_dir, root / "adapter", task_type="seq_cls", template="{sentence}")
    rows = [{"sentence": f"{'good ' * (i % 4)}movie {i}", "label": i % 2} for i in range(9)]
    return adapter, write_jsonl(root / "sst2.jsonl", rows), rows


def test_glue_scores_the_classifier_head_row_by_row(classifier, tmp_path):
    adapter, data, rows = classifier
    report = evaluate(
        adapter=adapter, tasks=[f"sst2={data}"], split="validation", batch_size=4, output=tmp_path
    )
    predictions = read_predictions(tmp_path, "sst2")
    model = ReftModel.from_pretrained(adapter, num_labels=2).eval()
    tokenizer = load_tokenizer(str(model.reft_config.base_model))
    for p, row in zip(predictions, rows, strict=True):
        ids = torch.tensor([tokenizer(row["sentence"])["input_ids"]])
        with torch.no_grad():
            logits = model(ids, torch.ones_like(ids), prompt_lengths=torch.tensor([ids.shape[1]]))
        assert p["prediction"] == logits.logits.argmax(-1).item()
        assert p["gold"] == row["label"] and p["correct"] == (p["prediction"] == row["label"])
    accuracy = sum(p["correct"] for p in predictions) / len(rows)
    assert report["tasks"]["sst2"]["metrics"] == {"accuracy": pytest.approx(accuracy)}


def test_glue_test_split_is_the_held_out_part_of_the_resplit(classifier, tmp_path):
    adapter, data, _ = classifier
    report = evaluate(adapter=adapter, tasks=[f"sst2={data}"], output=tmp_path)
    assert report["split"] == "test" and report["tasks"]["sst2"]["num_examples"] == 9 - 9 // 2


# ---------------------------------------------------------------------------- bad input


def test_adapter_and_config_that_disagree_are_refused(setup, tmp_path):
    _, _, adapter, data = setup
    other = tmp_path / "cfg.yaml"
    other.write_text(
        yaml.safe_dump(
            {"model": {"name_or_path": "smollm2-135m-instruct"}, "data": {"template": "alpaca"}}
        )
    )
    with pytest.raises(ReftError) as err:
        plan_eval(EvalOptions(config=other, adapter=adapter, tasks=[f"boolq={data}"]))
    message = str(err.value)
    assert f"adapter {adapter} and config {other} disagree" in message
    assert "'smollm2-135m-instruct'" in message and "'alpaca'" in message
    assert "\n" not in message


def test_generation_tasks_refuse_a_classifier_and_glue_refuses_a_generator(
    setup, classifier, tmp_path
):
    _, _, adapter, data = setup
    glue_adapter, glue_data, _ = classifier
    with pytest.raises(ReftError, match="needs a sequence classification model"):
        evaluate(adapter=adapter, tasks=[f"sst2={glue_data}"], output=tmp_path)
    with pytest.raises(ReftError, match="generates text but this is a classification model"):
        evaluate(adapter=glue_adapter, tasks=[f"boolq={data}"], output=tmp_path)
    mnli = write_jsonl(tmp_path / "mnli.jsonl", [{"premise": "a", "hypothesis": "b", "label": 2}])
    with pytest.raises(
        ReftError, match="task mnli has 3 output"
    ):  # (output: not the data's folder)
        evaluate(adapter=glue_adapter, tasks=[f"mnli={mnli}"], output=tmp_path / "out")


def test_bad_data_fails_before_the_model_loads(setup, tmp_path, monkeypatch):
    _, _, adapter, _ = setup
    rows = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "passage": "p"}])

    def never(*_):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("reft_cli.evaluation.evaluate.load_for_eval", never)
    with pytest.raises(ReftError, match=r"task piqa: dataset .* lacks column"):
        evaluate(adapter=adapter, tasks=[f"piqa={rows}"], output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nothing_to_evaluate_is_one_line():
    with pytest.raises(ReftError, match="nothing to evaluate"):
        plan_eval(EvalOptions())


def test_cli_runs_and_reports_errors_in_one_line(setup, tmp_path):
    _, _, adapter, data = setup
    ok = reft(
        "eval",
        "--adapter",
        str(adapter),
        "--tasks",
        f"boolq={data}",
        "--limit",
        "2",
        "--output",
        str(tmp_path),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "boolq" in ok.stdout and "accuracy" in ok.stdout
    assert (tmp_path / "predictions" / "boolq.jsonl").is_file()
    bad = reft("eval", "--adapter", str(adapter), "--tasks", "boolq,nope")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "unknown task 'nope'" in bad.stderr and "valid tasks: boolq" in bad.stderr


def test_an_existing_output_is_refused_and_overwrite_replaces_it_whole(setup, tmp_path):
    _, _, adapter, data = setup
    (tmp_path / "eval_results.json").write_text("{}")
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "piqa.jsonl").write_text("old\n")  # a task not rerun
    with pytest.raises(ReftError, match=r"is not empty .* pass --overwrite"):
        evaluate(adapter=adapter, tasks=[f"boolq={data}"], limit=1, output=tmp_path)
    assert (tmp_path / "eval_results.json").read_text() == "{}"
    evaluate(adapter=adapter, tasks=[f"boolq={data}"], limit=1, output=tmp_path, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["boolq.jsonl"]
    assert json.loads((tmp_path / "eval_results.json").read_text())["tasks"].keys() == {"boolq"}
    assert not [p for p in tmp_path.parent.iterdir() if p.name.endswith(".tmp")]
