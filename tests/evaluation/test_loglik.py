"""Log-likelihood scoring of answer options: against hand computations, padded or not, with and
without an adapter, and through `reft eval --scoring loglik`."""

import json
import math

import pytest
import torch
import yaml
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from reft_cli import ReftModel
from reft_cli.config.schema import ConfigError, load_config
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.errors import ReftError
from reft_cli.evaluation.evaluate import EvalOptions, plan_eval, run_eval
from reft_cli.evaluation.loglik import choose, continuation_logliks, encode_requests
from reft_cli.evaluation.predict import Subject
from tests.cli.test_cli import reft
from tests.conftest import BOS, byte_tokenizer, tiny_model_dir

from .test_evaluate import BOOLQ, QUIET, read_predictions, save_adapter, write_jsonl

QUESTIONS = ["is the sky blue", "can fish fly", "is water wet and also quite cold in winter", "x"]
RAW_BOOLQ = [{"question": q, "answer": i % 2 == 0} for i, q in enumerate(QUESTIONS)]


def mc_item(contexts, continuations, gold=0):
    return {
        "choices": [c.strip() for c in continuations],
        "gold_index": gold,
        "contexts": contexts,
        "continuations": continuations,
    }


ITEMS = [
    mc_item(["Question: is it?\nAnswer:"] * 2, [" no", " yes"], 1),
    mc_item(["A much longer context that pads the others in its batch"] * 3, [" a", " bb", " c"]),
    mc_item(["So Sarah", "So Maria"], [" always got the easier cases."] * 2, 1),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loglik")
    model_dir = tiny_model_dir(root / "model")
    adapter = save_adapter(model_dir, root / "adapter")
    return root, model_dir, adapter


def by_hand(model, tokenizer, context, continuation, adapter=False):
    """One unpadded row: the sum of log-softmax at each continuation token, context excluded."""
    ctx = tokenizer(context)["input_ids"]
    ids = tokenizer(context + continuation)["input_ids"]
    tensor = torch.tensor([ids])
    with torch.no_grad():
        if adapter:  # f1+l1 of the context: its first and last tokens
            positions = torch.tensor([[0, len(ctx) - 1]])
            logits = model(tensor, intervention_positions=positions).logits[0]
        else:
            logits = model(input_ids=tensor).logits[0]
    logprobs = logits.double().log_softmax(-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(len(ctx), len(ids)))


def option_pairs(items):
    return [p for item in items for p in zip(item["contexts"], item["continuations"], strict=True)]


def requests_for(tokenizer, items=ITEMS):
    requests, cut = encode_requests(tokenizer, items, max_length=512)
    assert cut == 0
    return requests


# ---------------------------------------------------------------------------- the scorer


def test_logliks_equal_the_hand_sum_batched_or_one_at_a_time(setup):
    _, model_dir, _ = setup
    model, tokenizer = load_model(str(model_dir)).eval(), load_tokenizer(str(model_dir))
    subject = Subject(model, tokenizer)
    requests = requests_for(tokenizer)
    assert len({len(r.context) + len(r.continuation) for r in requests}) > 3  # batches pad
    batched = continuation_logliks(subject, requests, batch_size=4)
    alone = continuation_logliks(subject, requests, batch_size=1)
    pairs = option_pairs(ITEMS)
    expected = [by_hand(model, tokenizer, *pair) for pair in pairs]
    assert batched == pytest.approx(expected, abs=1e-5)
    assert alone == pytest.approx(expected, abs=1e-5)
    predictions, _ = choose(ITEMS, batched)
    position = 0
    for item, prediction in zip(ITEMS, predictions, strict=True):
        scores = expected[position : position + len(item["choices"])]
        position += len(scores)
        assert prediction["chosen"] == scores.index(max(scores))


def test_with_an_adapter_the_context_positions_are_edited(setup):
    _, model_dir, adapter = setup
    model, tokenizer = ReftModel.from_pretrained(adapter).eval(), load_tokenizer(str(model_dir))
    requests = requests_for(tokenizer)
    batched = continuation_logliks(Subject(model, tokenizer), requests, batch_size=4)
    pairs = option_pairs(ITEMS)
    expected = [by_hand(model, tokenizer, *pair, adapter=True) for pair in pairs]
    assert batched == pytest.approx(expected, abs=1e-5)
    with model.disable_adapter():
        base = continuation_logliks(Subject(model, tokenizer), requests, batch_size=4)
    assert min(abs(a - b) for a, b in zip(batched, base, strict=True)) > 1e-3


def test_tokens_split_where_the_context_ends_and_long_rows_lose_their_start():
    tokenizer = byte_tokenizer()  # <bos> then one token per byte
    [yes] = encode_requests(tokenizer, [mc_item(["ab"], [" yes"])], 512)[0]
    assert yes.context == tokenizer("ab")["input_ids"] and yes.context[0] == BOS
    assert tokenizer.decode(yes.continuation) == " yes"
    requests, cut = encode_requests(tokenizer, [mc_item(["abcdef"], [" yes"])], max_length=6)
    assert cut == 1 and tokenizer.decode(requests[0].context) == "ef"
    assert tokenizer.decode(requests[0].continuation) == " yes"
    with pytest.raises(ReftError, match="leaves no context"):
        encode_requests(tokenizer, [mc_item(["abcdef"], [" yes"])], max_length=4)


class FixedDistribution(nn.Module):
    """A stand-in model that gives every position the same next-token distribution."""

    def __init__(self, logprobs: torch.Tensor) -> None:
        super().__init__()
        self.logprobs = nn.Parameter(logprobs, requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return CausalLMOutput(logits=self.logprobs.expand(*input_ids.shape, -1))


def test_acc_norm_prefers_the_likelier_character_when_lengths_differ():
    tokenizer = byte_tokenizer()
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    # p(a) = e^-1, p(b) = e^-3, the rest spread over the other tokens.
    probs = torch.full((259,), (1 - math.exp(-1) - math.exp(-3)) / 257, dtype=torch.float64)
    probs[a], probs[b] = math.exp(-1), math.exp(-3)
    subject = Subject(FixedDistribution(probs.log().float()), tokenizer)
    items = [mc_item(["Q:"] * 2, ["b", "aaaa"], gold=1)]
    logliks = continuation_logliks(subject, encode_requests(tokenizer, items, 64)[0], 2)
    assert logliks == pytest.approx([-3.0, -4.0], abs=1e-5)
    [prediction], metrics = choose(items, logliks)
    # sums: -3 > -4 picks "b"; per character: -3 < -1 picks "aaaa"
    assert (prediction["chosen"], prediction["chosen_norm"]) == (0, 1)
    assert metrics == {"accuracy": 0.0, "acc_norm": 1.0}


# ---------------------------------------------------------------------------- reft eval


def config_file(tmp_path, model_dir, **eval_section):
    path = tmp_path / "cfg.yaml"
    settings = {"model": {"name_or_path": str(model_dir)}, "eval": eval_section}
    path.write_text(yaml.safe_dump(settings))
    return path


def test_eval_writes_option_logliks_for_the_base_model_and_an_adapter(setup, tmp_path):
    _, model_dir, adapter = setup
    data = write_jsonl(tmp_path / "boolq.jsonl", RAW_BOOLQ)
    options = {"tasks": [f"boolq={data}"], "scoring": "loglik", "batch_size": 3}
    reports, logliks = {}, {}
    for name, extra in (("base", {"no_adapter": True}), ("adapter", {})):
        out = tmp_path / name
        reports[name] = run_eval(
            EvalOptions(adapter=adapter, output=out, **options, **extra), QUIET
        )
        predictions = read_predictions(out, "boolq")
        logliks[name] = [p["logliks"] for p in predictions]
        for p, row in zip(predictions, RAW_BOOLQ, strict=True):
            assert p["choices"] == ["no", "yes"] and p["gold"] == int(row["answer"])
            assert p["chosen"] == p["logliks"].index(max(p["logliks"]))
            assert p["correct"] == (p["chosen"] == p["gold"])
        task = reports[name]["tasks"]["boolq"]
        assert reports[name]["scoring"] == "loglik" and set(task["metrics"]) == {
            "accuracy",
            "acc_norm",
        }
        assert task["score"] == sum(p["correct"] for p in predictions) / len(RAW_BOOLQ)
    base = load_model(str(model_dir)).eval()
    tokenizer = load_tokenizer(str(model_dir))
    question = f"Question: {QUESTIONS[0]}?\nAnswer:"
    assert logliks["base"][0] == pytest.approx(
        [by_hand(base, tokenizer, question, c) for c in (" no", " yes")], abs=1e-5
    )
    assert logliks["base"] != logliks["adapter"]


def test_loglik_refuses_rows_without_options_before_loading_the_model(setup, tmp_path, monkeypatch):
    _, _, adapter = setup
    data = write_jsonl(tmp_path / "adapters.jsonl", BOOLQ)

    def never(*_):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("reft_cli.evaluation.evaluate.load_subject", never)
    with pytest.raises(ReftError, match="LLM-Adapters rows") as err:
        run_eval(EvalOptions(adapter=adapter, tasks=[f"boolq={data}"], scoring="loglik"), QUIET)
    assert "\n" not in str(err.value)


def test_loglik_refuses_tasks_without_options_and_unknown_scorings(setup):
    _, _, adapter = setup
    with pytest.raises(ReftError, match="gsm8k can only be scored by generation"):
        plan_eval(EvalOptions(adapter=adapter, tasks=["boolq", "gsm8k"], scoring="loglik"))
    with pytest.raises(ReftError, match="unknown scoring 'logprob'"):
        plan_eval(EvalOptions(adapter=adapter, tasks=["boolq"], scoring="logprob"))


def test_eval_scoring_is_a_config_key(setup, tmp_path):
    _, model_dir, _ = setup
    path = config_file(tmp_path, model_dir, tasks=["boolq"], scoring="loglik")
    assert plan_eval(EvalOptions(config=path, no_adapter=True)).scoring == "loglik"
    assert plan_eval(EvalOptions(config=path, no_adapter=True, scoring="generate")).scoring == (
        "generate"
    )
    assert load_config(config_file(tmp_path, model_dir)).eval.scoring == "generate"
    with pytest.raises(ConfigError, match="loglik"):
        load_config(config_file(tmp_path, model_dir, scoring="logprob"))


def test_cli_scores_the_base_model_by_loglik(setup, tmp_path):
    _, model_dir, _ = setup
    data = write_jsonl(tmp_path / "boolq.jsonl", RAW_BOOLQ * 2)
    config = config_file(tmp_path, model_dir)
    out = tmp_path / "out"
    args = ["--no-adapter", "--scoring", "loglik", "--tasks", f"boolq={data}", "--limit", "4"]
    result = reft("eval", str(config), *args, "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acc_norm" in result.stdout
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["scoring"] == "loglik" and saved["tasks"]["boolq"]["num_examples"] == 4
    assert len(read_predictions(out, "boolq")) == 4
