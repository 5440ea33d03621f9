"""`data.mc_format: loglik`: training examples are the gold option exactly as the log-likelihood
scorer tokenizes it, and their loss is the mean NLL of the gold continuation's tokens."""

import json

import pytest
from accelerate import Accelerator

from reft_cli import ReftModel
from reft_cli.config.reader import load_config
from reft_cli.config.schema import ConfigError, DataConfig
from reft_cli.data.examples import IGNORE_INDEX, collate, load_data
from reft_cli.engine.base_models import load_tokenizer
from reft_cli.engine.loading import LoadedModel
from reft_cli.errors import ReftError
from reft_cli.evaluation.loglik import choose, continuation_logliks, encode_requests
from reft_cli.training.loss import forward, loss_sum
from reft_cli.training.validation import choice_accuracy, evaluate
from tests.conftest import tiny_model_dir
from tests.evaluation.test_evaluate import save_adapter
from tests.evaluation.test_loglik import by_hand, mc_item

ROWS = [
    mc_item(["Question: is it?\nAnswer:"] * 2, [" no", " yes"], 1),
    mc_item(["A longer context, so the batch pads"] * 3, [" a", " bb", " ccc"], 2),
    mc_item(["So Sarah", "So Maria"], [" always got the easier cases."] * 2, 0),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    model_dir = tiny_model_dir(root / "model")
    adapter = save_adapter(model_dir, root / "adapter")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return model_dir, adapter, data


def gold_requests(tokenizer):
    requests, _ = encode_requests(tokenizer, ROWS, max_length=512)
    starts = [0, 2, 5]  # each row's first option among the requests
    return [requests[s + row["gold_index"]] for s, row in zip(starts, ROWS, strict=True)]


def examples(data, tokenizer, **changes):
    cfg = DataConfig(dataset=str(data), mc_format="loglik", **changes)
    return load_data(cfg, "causal_lm", tokenizer).train


def test_examples_are_the_scorers_gold_context_and_continuation(setup):
    model_dir, _, data = setup
    tokenizer = load_tokenizer(str(model_dir))
    built = examples(data, tokenizer)
    for example, request in zip(built, gold_requests(tokenizer), strict=True):
        assert example.input_ids[: example.prompt_length] == request.context
        assert example.input_ids[example.prompt_length :] == request.continuation  # no eos
        assert example.labels == [IGNORE_INDEX] * len(request.context) + request.continuation


def test_loss_is_the_mean_nll_of_the_gold_continuations(setup):
    model_dir, adapter, data = setup
    tokenizer = load_tokenizer(str(model_dir))
    model = ReftModel.from_pretrained(adapter).eval()
    batch = collate(examples(data, tokenizer), tokenizer.pad_token_id)
    by_scorer = continuation_logliks(LoadedModel(model, tokenizer), gold_requests(tokenizer), 4)
    hand = [
        by_hand(model, tokenizer, row["contexts"][g], row["continuations"][g], adapter=True)
        for row in ROWS
        for g in [row["gold_index"]]
    ]
    assert by_scorer == pytest.approx(hand, abs=1e-5)
    tokens = sum(len(r.continuation) for r in gold_requests(tokenizer))
    for head_on_targets in (False, True):
        outputs, targets = forward(model, batch, "causal_lm", head_on_targets)
        summed, count = loss_sum(outputs, targets, "causal_lm")
        assert count.item() == tokens
        assert (summed / count).item() == pytest.approx(-sum(hand) / tokens, abs=1e-5)


def test_rows_without_options_and_over_long_rows(setup, tmp_path):
    model_dir, _, data = setup
    tokenizer = load_tokenizer(str(model_dir))
    lengths = [len(r.context) + len(r.continuation) for r in gold_requests(tokenizer)]
    cap = sorted(lengths)[1]
    kept = examples(data, tokenizer, max_length=cap)
    assert [ex.example_id for ex in kept] == [i for i, n in enumerate(lengths) if n <= cap]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "hi", "response": "there"}) + "\n")
    with pytest.raises(ReftError, match="contexts"):
        examples(plain, tokenizer)


def test_config_checks_the_format_and_the_task_type():
    assert load_config(None, ["data.mc_format=loglik"]).data.mc_format == "loglik"
    with pytest.raises(ConfigError, match="loglik"):
        load_config(None, ["data.mc_format=logli"])
    with pytest.raises(ConfigError, match="causal_lm"):
        load_config(None, ["data.mc_format=loglik", "model.task_type=seq_cls"])


def test_every_option_examples_carry_their_row_option_and_gold(setup):
    model_dir, _, data = setup
    tokenizer = load_tokenizer(str(model_dir))
    cfg = DataConfig(dataset=str(data), eval_dataset=str(data), mc_format="loglik")
    loaded = load_data(cfg, "causal_lm", tokenizer)
    requests, _ = encode_requests(tokenizer, ROWS, max_length=512)
    assert len(loaded.train) == len(ROWS)  # training keeps the gold option only
    assert [(ex.example_id, ex.choice) for ex in loaded.eval] == [
        (r, (k, row["gold_index"]))
        for r, row in enumerate(ROWS)
        for k in range(len(row["contexts"]))
    ]
    for example, request in zip(loaded.eval, requests, strict=True):
        assert example.input_ids == request.context + request.continuation
        assert example.prompt_length == len(request.context)


def test_a_row_with_an_over_long_option_leaves_the_selection_set_whole(setup):
    model_dir, _, data = setup
    tokenizer = load_tokenizer(str(model_dir))
    requests, _ = encode_requests(tokenizer, ROWS, max_length=512)
    longest_of_row_1 = max(len(r.context) + len(r.continuation) for r in requests[2:5])
    cap = longest_of_row_1 - 1
    assert all(len(r.context) + len(r.continuation) <= cap for r in requests[:2] + requests[5:])
    cfg = DataConfig(dataset=str(data), eval_dataset=str(data), mc_format="loglik", max_length=cap)
    loaded = load_data(cfg, "causal_lm", tokenizer)
    assert sorted({ex.example_id for ex in loaded.eval}) == [0, 2]
    assert loaded.dropped_eval == 1


@pytest.mark.parametrize("head_on_targets", [False, True])
def test_selection_accuracy_and_loss_match_the_loglik_scorer(setup, head_on_targets):
    model_dir, adapter, data = setup
    tokenizer = load_tokenizer(str(model_dir))
    model = ReftModel.from_pretrained(adapter).eval()
    run = load_config(None, [f"data.dataset={data}", "train.per_device_eval_batch_size=2"])
    cfg = DataConfig(dataset=str(data), eval_dataset=str(data), mc_format="loglik")
    evals = load_data(cfg, "causal_lm", tokenizer).eval
    requests, _ = encode_requests(tokenizer, ROWS, max_length=512)
    logliks = continuation_logliks(LoadedModel(model, tokenizer), requests, 4)
    _, expected = choose(ROWS, logliks)
    metrics = evaluate(Accelerator(cpu=True), model, evals, tokenizer, run, head_on_targets)
    assert metrics["eval_accuracy"] == pytest.approx(expected["accuracy"])
    gold = [logliks[s + row["gold_index"]] for s, row in zip([0, 2, 5], ROWS, strict=True)]
    tokens = sum(len(r.continuation) for r in gold_requests(tokenizer))
    assert metrics["eval_loss"] == pytest.approx(-sum(gold) / tokens, abs=1e-5)


def test_choice_accuracy_takes_each_rows_likeliest_option_first_on_ties():
    # (row, option, gold, log-likelihood), in the order processes might return them
    scored = [(1, 1, 0, -2.0), (0, 0, 1, -1.0), (1, 0, 0, -2.0), (0, 1, 1, -0.5), (2, 0, 1, -3.0)]
    scored.append((2, 1, 1, -3.5))
    assert choice_accuracy(scored) == pytest.approx(
        2 / 3
    )  # row 0 right, row 1 tie → 0, row 2 wrong
    assert choice_accuracy([(0, 0, 0, -1.0), (0, 1, 0, -1.0)]) == 1.0
    assert choice_accuracy([(0, 0, 1, -1.0), (0, 1, 1, -1.0)]) == 0.0
