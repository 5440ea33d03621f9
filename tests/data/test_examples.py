"""The data pipeline: loading rows, exact prompt/response token boundaries, splits and batching."""

import json

import datasets
import huggingface_hub
import pytest
import torch

from reft_cli.config.schema import DataConfig
from reft_cli.data.examples import (
    Example,
    build_examples,
    collate,
    label_names_of,
    load_data,
    load_rows,
    split_train_eval,
)
from reft_cli.data.templates import make_template
from reft_cli.errors import ReftError
from tests.conftest import BOS, EOS, byte_tokenizer, needs_smollm2


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def causal(rows, tokenizer, **data):
    cfg = DataConfig(**data)
    return build_examples(rows, cfg, "causal_lm", tokenizer, make_template(cfg, tokenizer))


def seq_cls(rows, tokenizer, label_names=None, num_labels=None, **data):
    cfg = DataConfig(**data)
    template = make_template(cfg, tokenizer)
    return build_examples(
        rows, cfg, "seq_cls", tokenizer, template, label_names=label_names, num_labels=num_labels
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"question {i}?", "response": f"answer {i}"} for i in range(10)]


# ---------------------------------------------------------------------------- causal LM examples


def test_causal_example_is_prompt_then_response_then_eos(tok):
    [ex], dropped = causal([{"prompt": "Hi?", "response": "Yo"}], tok)
    assert dropped == 0
    assert ex.input_ids == [BOS, *ids(tok, "Hi?"), *ids(tok, "Yo"), EOS]
    assert ex.prompt_length == 4


def test_labels_ignore_exactly_the_prompt_tokens(tok):
    [ex], _ = causal([{"prompt": "Hi?", "response": "Yo"}], tok)
    assert ex.labels == [-100] * 4 + [*ids(tok, "Yo"), EOS]
    assert len(ex.labels) == len(ex.input_ids)


def test_example_id_is_the_row_index(tok):
    examples, _ = causal(ROWS[:3], tok)
    assert [ex.example_id for ex in examples] == [0, 1, 2]


def test_over_long_examples_are_dropped_and_counted_never_truncated(tok):
    rows = [
        {"prompt": "ab", "response": "c"},  # bos + 2 + 1 + eos = 5 tokens
        {"prompt": "abcdef", "response": "g"},  # 9 tokens
        {"prompt": "a", "response": "bcd"},  # 6 tokens
    ]
    examples, dropped = causal(rows, tok, max_length=6)
    assert dropped == 1
    assert [ex.example_id for ex in examples] == [0, 2]
    assert [len(ex.input_ids) for ex in examples] == [5, 6]
    assert examples[1].input_ids[-1] == EOS


def test_a_prompt_of_zero_tokens_is_an_error():
    with pytest.raises(ReftError, match="row 1: the prompt tokenizes to no tokens"):
        causal([ROWS[0], {"prompt": "", "response": "x"}], byte_tokenizer(bos=False))


def test_causal_lm_without_a_response_column_is_an_error(tok):
    with pytest.raises(ReftError, match=r"'response' or 'output'.*columns: prompt.*data\.columns"):
        causal([{"prompt": "p"}], tok)


def test_named_template_text_is_what_gets_tokenized(tok):
    row = {"question": "1+1?", "answer": "2\n#### 2"}
    [ex], _ = causal([row], tok, template="gsm8k")
    template = make_template(DataConfig(template="gsm8k"))
    assert ex.input_ids[: ex.prompt_length] == tok(template.prompt(row))["input_ids"]
    assert tok.decode(ex.input_ids[ex.prompt_length :]) == template.response(row) + "<eos>"


@needs_smollm2
def test_chat_prompt_boundary_is_exact_with_smollm2():
    from reft_cli.engine.base_models import load_tokenizer

    smollm2 = load_tokenizer("smollm2-135m-instruct")
    row = {"prompt": "Name a fruit.", "response": "An apple."}
    [ex], _ = causal([row], smollm2, template="chat", system_prompt="Be brief.")
    chat = smollm2.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt = smollm2(chat, add_special_tokens=False)["input_ids"]
    assert ex.input_ids[: ex.prompt_length] == prompt
    assert ex.labels[: ex.prompt_length] == [-100] * len(prompt)
    assert ex.labels[ex.prompt_length :] == ex.input_ids[ex.prompt_length :]
    assert ex.input_ids[-1] == smollm2.eos_token_id
    assert smollm2.decode(ex.input_ids[ex.prompt_length :]) == "An apple.<|im_end|>"


# ---------------------------------------------------------------------------- classification


def test_string_labels_map_to_sorted_ids(tok):
    rows = [{"prompt": "x", "label": name} for name in ("pos", "neg", "neutral", "neg")]
    examples, _ = seq_cls(rows, tok)
    assert [ex.label for ex in examples] == [2, 0, 1, 0]
    assert label_names_of(rows, DataConfig()) == ["neg", "neutral", "pos"]


def test_classification_input_is_the_whole_prompt_without_labels(tok):
    [ex], _ = seq_cls([{"prompt": "good movie", "label": 1}], tok)
    assert ex.input_ids == tok("good movie")["input_ids"]
    assert ex.prompt_length == len(ex.input_ids) and ex.labels is None and ex.label == 1


def test_given_label_names_fix_the_ids(tok):
    rows = [{"prompt": "x", "label": "pos"}]
    [ex], _ = seq_cls(rows, tok, label_names=["neg", "neutral", "pos"])
    assert ex.label == 2


def test_label_outside_the_training_labels_is_an_error(tok):
    with pytest.raises(ReftError, match=r"maybe.*not among the training labels"):
        seq_cls([{"prompt": "x", "label": "maybe"}], tok, label_names=["neg", "pos"])


def test_class_label_feature_gives_its_names(tok):
    features = datasets.Features(
        {"prompt": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])}
    )
    rows = datasets.Dataset.from_dict({"prompt": ["a", "b"], "label": [1, 0]}, features=features)
    assert label_names_of(rows, DataConfig()) == ["no", "yes"]
    assert [ex.label for ex in seq_cls(rows, tok)[0]] == [1, 0]


def test_mapped_label_column_is_used(tok):
    rows = [{"sentence": "x", "target": "b"}, {"sentence": "y", "target": "a"}]
    examples, _ = seq_cls(rows, tok, columns={"prompt": "sentence", "label": "target"})
    assert [ex.label for ex in examples] == [1, 0]


def test_one_label_means_regression_with_float_labels(tok):
    rows = [{"prompt": "x", "label": 3}, {"prompt": "y", "label": 4.25}]
    examples, _ = seq_cls(rows, tok, num_labels=1)
    assert [ex.label for ex in examples] == [3.0, 4.25]
    assert all(isinstance(ex.label, float) for ex in examples)


def test_fractional_labels_without_regression_are_an_error(tok):
    with pytest.raises(ReftError, match="num_labels=1"):
        seq_cls([{"prompt": "x", "label": 0.5}], tok)


def test_missing_label_column_lists_the_columns(tok):
    with pytest.raises(ReftError, match=r"'label' not found .*columns: prompt, y"):
        seq_cls([{"prompt": "x", "y": 1}], tok)


def test_over_long_classification_inputs_are_dropped(tok):
    rows = [{"prompt": "abc", "label": 0}, {"prompt": "abcdefgh", "label": 1}]
    examples, dropped = seq_cls(rows, tok, max_length=4)
    assert dropped == 1 and [ex.example_id for ex in examples] == [0]


# ---------------------------------------------------------------------------- loading rows


def test_loads_a_jsonl_file(tmp_path):
    rows = load_rows(str(write_jsonl(tmp_path / "d.jsonl", ROWS[:3])), None, "train")
    assert rows.to_list() == ROWS[:3]


def test_loads_a_csv_file(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,label\nhello,pos\nbye,neg\n")
    rows = load_rows(str(tmp_path / "d.csv"), None, "train")
    assert rows.to_list() == [
        {"prompt": "hello", "label": "pos"},
        {"prompt": "bye", "label": "neg"},
    ]


def test_loads_a_parquet_file(tmp_path):
    datasets.Dataset.from_list(ROWS[:4]).to_parquet(str(tmp_path / "d.parquet"))
    assert load_rows(str(tmp_path / "d.parquet"), None, "train").to_list() == ROWS[:4]


def test_a_single_data_file_is_one_split_whatever_its_name(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS[:2]))
    assert len(load_rows(path, None, "validation")) == 2


def test_loads_a_save_to_disk_dataset(tmp_path):
    datasets.Dataset.from_list(ROWS[:5]).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(str(tmp_path / "ds"), None, "train").to_list() == ROWS[:5]


def test_picks_the_split_of_a_save_to_disk_dataset_dict(tmp_path):
    splits = {"train": ROWS[:3], "test": ROWS[3:5]}
    datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    ).save_to_disk(str(tmp_path / "dd"))
    assert load_rows(str(tmp_path / "dd"), None, "test").to_list() == ROWS[3:5]


def test_unknown_split_lists_the_available_ones(tmp_path):
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:1]), "test": datasets.Dataset.from_list(ROWS)}
    ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ReftError, match=r"no split 'validation'; available: train, test"):
        load_rows(str(tmp_path / "dd"), None, "validation")


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ReftError, match="not found") as err:
        load_rows(str(tmp_path / "nope.jsonl"), None, "train")
    assert "\n" not in str(err.value)


def test_missing_relative_file_is_not_taken_for_a_hub_id():
    with pytest.raises(ReftError, match=r"data/missing\.csv not found"):
        load_rows("data/missing.csv", None, "train")


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(ReftError, match=r"d\.jsonl has no rows"):
        load_rows(str(tmp_path / "d.jsonl"), None, "train")


def test_dataset_without_rows_is_an_error(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,label\n")
    with pytest.raises(ReftError, match=r"d\.csv has no rows"):
        load_rows(str(tmp_path / "d.csv"), None, "train")


def test_unsupported_extension_is_an_error(tmp_path):
    (tmp_path / "d.txt").write_text("hello\n")
    with pytest.raises(ReftError, match=r"unsupported extension; use one of \.json, \.jsonl"):
        load_rows(str(tmp_path / "d.txt"), None, "train")


def test_unreachable_hub_dataset_is_a_one_line_error(monkeypatch):
    # the process may have imported huggingface_hub before HF_HUB_OFFLINE was set
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ReftError, match="could not load dataset 'nobody/no-such-set'") as err:
        load_rows("nobody/no-such-set", None, "train")
    assert "\n" not in str(err.value)


@pytest.fixture
def data_package(tmp_path, monkeypatch):
    """An installed-looking package whose import would fail, holding data/rows.jsonl."""
    package = tmp_path / "reft_test_datapkg"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('pkg: must not import the package')\n")
    write_jsonl(package / "data" / "rows.jsonl", ROWS[:2])
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_pkg_source_reads_data_inside_a_package_without_importing_it(data_package):
    rows = load_rows("pkg:reft_test_datapkg/data/rows.jsonl", None, "train")
    assert rows.to_list() == ROWS[:2]


def test_pkg_source_resolves_inside_an_installed_package():
    # reft_cli/__init__.py exists, so the error is about reading it as data, not a missing path
    with pytest.raises(ReftError, match=r"reft_cli/__init__\.py has an unsupported extension"):
        load_rows("pkg:reft_cli/__init__.py", None, "train")


def test_pkg_source_with_a_missing_file_is_an_error(data_package):
    with pytest.raises(ReftError, match=r"pkg:reft_test_datapkg/data/other\.jsonl not found"):
        load_rows("pkg:reft_test_datapkg/data/other.jsonl", None, "train")


def test_pkg_source_with_an_unknown_package_is_an_error():
    with pytest.raises(ReftError, match="no installed package named 'no_such_pkg_xyz'"):
        load_rows("pkg:no_such_pkg_xyz/rows.jsonl", None, "train")


# ---------------------------------------------------------------------------- splits, load_data


def examples_of(n):
    return [Example(i, [3], 1, labels=[-100]) for i in range(n)]


def test_val_split_is_reproducible_disjoint_and_complete():
    train, held = split_train_eval(examples_of(20), 5, seed=7)
    again = split_train_eval(examples_of(20), 5, seed=7)
    held_ids = [ex.example_id for ex in held]
    assert held_ids == [ex.example_id for ex in again[1]]
    assert len(held) == 5 and len(train) == 15
    assert sorted(held_ids + [ex.example_id for ex in train]) == list(range(20))


def test_val_split_depends_on_the_seed():
    picks = {
        tuple(ex.example_id for ex in split_train_eval(examples_of(50), 10, seed)[1])
        for seed in range(3)
    }
    assert len(picks) == 3


def test_fractional_val_size_holds_out_that_share():
    train, held = split_train_eval(examples_of(40), 0.25, seed=0)
    assert (len(train), len(held)) == (30, 10)


def test_val_size_leaving_nothing_to_train_is_an_error():
    with pytest.raises(ReftError, match="leaving none to train on"):
        split_train_eval(examples_of(3), 3, seed=0)


def test_load_data_keeps_the_first_max_samples_rows(tmp_path, tok):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    data = load_data(DataConfig(dataset=path, max_samples=4), "causal_lm", tok)
    assert [ex.example_id for ex in data.train] == [0, 1, 2, 3]
    assert data.eval is None and data.template == "{prompt}" and data.num_labels is None


def test_load_data_holds_out_val_size(tmp_path, tok):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    data = load_data(DataConfig(dataset=path, val_size=0.3), "causal_lm", tok, seed=1)
    assert len(data.train) == 7 and len(data.eval) == 3
    assert not {ex.example_id for ex in data.train} & {ex.example_id for ex in data.eval}


def test_load_data_reads_a_separate_eval_dataset(tmp_path, tok):
    train = str(write_jsonl(tmp_path / "train.jsonl", ROWS[:6]))
    dev = str(write_jsonl(tmp_path / "dev.jsonl", [{**ROWS[0], "response": "x" * 50}, ROWS[1]]))
    data = load_data(DataConfig(dataset=train, eval_dataset=dev, max_length=30), "causal_lm", tok)
    assert len(data.train) == 6 and [ex.example_id for ex in data.eval] == [1]
    assert data.dropped_eval == 1 and data.dropped_train == 0


def test_load_data_reads_eval_split_of_the_same_dataset(tmp_path, tok):
    rows = [{"prompt": f"p{i}", "label": ["no", "yes"][i % 2]} for i in range(6)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:4]), "dev": datasets.Dataset.from_list(rows[4:])}
    ).save_to_disk(str(tmp_path / "dd"))
    data = load_data(DataConfig(dataset=str(tmp_path / "dd"), eval_split="dev"), "seq_cls", tok)
    assert [ex.label for ex in data.eval] == [0, 1]
    assert data.label_names == ["no", "yes"] and data.num_labels == 2


def test_load_data_rejects_both_val_size_and_an_eval_set(tmp_path, tok):
    path = str(write_jsonl(tmp_path / "d.jsonl", ROWS))
    cfg = DataConfig(dataset=path, val_size=2, eval_split="test")
    with pytest.raises(ReftError, match="not both"):
        load_data(cfg, "causal_lm", tok)


# ---------------------------------------------------------------------------- collate


def test_collate_right_pads_causal_batches():
    examples = [
        Example(7, [5, 6, 7], 2, labels=[-100, -100, 7]),
        Example(3, [5, 8, 9, 10, 11], 3, labels=[-100, -100, -100, 10, 11]),
    ]
    batch = collate(examples, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [5, 8, 9, 10, 11]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 7, -100, -100], [-100, -100, -100, 10, 11]]
    assert batch["prompt_lengths"].tolist() == [2, 3]
    assert batch["example_ids"].tolist() == [7, 3]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_gives_one_class_id_per_row():
    batch = collate([Example(0, [4], 1, label=1), Example(1, [4, 5], 2, label=0)], 0)
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert batch["input_ids"].shape == (2, 2)


def test_collate_gives_float_labels_for_regression():
    batch = collate([Example(0, [4], 1, label=0.5), Example(1, [4], 1, label=2.0)], 0)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 2.0]


def test_collate_of_real_examples_keeps_the_prompt_boundary(tok):
    examples, _ = causal(ROWS[:3], tok)
    batch = collate(examples, tok.pad_token_id)
    for row, ex in enumerate(examples):
        first_target = (batch["labels"][row] != -100).nonzero()[0].item()
        assert first_target == batch["prompt_lengths"][row].item() == ex.prompt_length


def test_reading_a_local_file_prints_no_progress_bar_of_datasets(tmp_path, capfd):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\n" for i in range(3))
    )
    datasets.enable_progress_bars()
    rows = load_rows(str(path), None, "train")
    assert len(rows) == 3
    assert "Generating" not in capfd.readouterr().err
    assert datasets.is_progress_bar_enabled()  # put back as it was
