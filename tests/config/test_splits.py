"""The paper's GLUE validation re-split, shared by training (model selection) and `reft eval`."""

import json

import datasets
import pytest

from reft_cli.config.schema import RunConfig
from reft_cli.config.splits import SplitSpec, glue_resplit, parse_split_spec, take_split
from reft_cli.errors import ReftError
from reft_cli.evaluation.tasks import load_task_rows, parse_task_refs
from reft_cli.training.setup import build
from tests.conftest import tiny_model_dir


@pytest.mark.parametrize(
    ("size", "selection"), [(10_000, 1000), (5001, 1000), (5000, 2500), (1043, 521), (872, 436)]
)
def test_glue_resplit_sizes_are_the_papers(size, selection):
    chosen, test = glue_resplit(size, seed=42)
    assert len(chosen) == selection and len(test) == size - selection
    assert not set(chosen) & set(test) and sorted(chosen + test) == list(range(size))
    assert chosen == sorted(chosen) and test == sorted(test)


def test_glue_resplit_is_seeded():
    assert glue_resplit(100, seed=42) == glue_resplit(100, seed=42)
    assert glue_resplit(100, seed=42) != glue_resplit(100, seed=43)
    assert glue_resplit(100, seed=42)[0] != list(range(50))  # random, not the first half


def test_split_names_parse():
    assert parse_split_spec("validation[200:]") == SplitSpec("validation", slice(200, None))
    assert parse_split_spec("selection of validation") == SplitSpec(
        "validation", slice(None), "selection"
    )
    assert parse_split_spec("test of validation_matched[500:]") == SplitSpec(
        "validation_matched", slice(500, None), "test"
    )
    with pytest.raises(ReftError, match="'half' is not a half of the re-split; write selection"):
        parse_split_spec("half of validation")


def test_halves_are_disjoint_cover_their_rows_and_a_slice_resplits_only_its_rows():
    rows = datasets.Dataset.from_dict({"i": list(range(6000))})
    selection = list(take_split(rows, parse_split_spec("selection of validation"), seed=3)["i"])
    test = list(take_split(rows, parse_split_spec("test of validation"), seed=3)["i"])
    assert (len(selection), len(test)) == (1000, 5000)
    assert not set(selection) & set(test) and sorted(selection + test) == list(range(6000))
    inner = list(take_split(rows, parse_split_spec("selection of validation[5100:]"), seed=3)["i"])
    assert len(inner) == 450 and min(inner) >= 5100


def test_an_empty_half_is_one_clear_line():
    rows = datasets.Dataset.from_dict({"i": [0]})
    with pytest.raises(ReftError, match="selection half of split 'validation' is empty"):
        take_split(rows, parse_split_spec("selection of validation"), seed=0)


def test_bad_half_in_the_config_is_reported_with_its_key():
    with pytest.raises(ReftError, match=r"data\.eval_split: 'choice of validation' is not allowed"):
        RunConfig.from_dict({"data": {"eval_split": "choice of validation"}})


# ---------------------------------------------------------------------------- train vs eval


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_selects_on_the_selection_half_and_eval_reports_the_other(tmp_path):
    sentences = [f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(24)]
    rows = [{"sentence": s, "label": i % 2} for i, s in enumerate(sentences)]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:8])
    validation = write_jsonl(tmp_path / "validation.jsonl", rows)
    run = RunConfig.from_dict(
        {
            "model": {"name_or_path": str(tiny_model_dir(tmp_path / "bert", "bert")),
                      "task_type": "seq_cls"},
            "data": {"dataset": str(train), "eval_dataset": str(validation),
                     "eval_split": "selection of validation", "template": "{sentence}"},
            "intervention": {"layers": [0], "rank": 1, "positions": "f1"},
            "train": {"seed": 7, "output_dir": str(tmp_path / "out")},
        }
    )  # fmt: skip
    setup = build(run)
    tokenizer = setup.tokenizer
    selected = [tokenizer.decode(ex.input_ids, skip_special_tokens=True) for ex in setup.data.eval]
    (ref,) = parse_task_refs([f"sst2={validation}"])
    selection = list(load_task_rows(ref, "selection", seed=7)["sentence"])
    reported = list(load_task_rows(ref, "test", seed=7)["sentence"])
    assert selected == selection and len(selection) == 12  # half of 24, as `reft eval` draws it
    assert not set(selection) & set(reported) and len(reported) == 12
    assert list(load_task_rows(ref, "test of validation", seed=7)["sentence"]) == reported
