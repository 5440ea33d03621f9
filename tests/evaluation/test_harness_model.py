"""`--model reft` in lm-evaluation-harness: positions on the context only, batches that score as
their rows one at a time, and generation over the KV cache, on a tiny random model."""

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance

from reft_cli.errors import ReftError
from reft_cli.evaluation.harness.context_lengths import ContextLengths
from reft_cli.evaluation.harness.model import ReftLM
from reft_cli.evaluation.loglik import Request, continuation_logliks
from tests.conftest import tiny_model_dir
from tests.engine.test_lora import ROWS, build, lora_run, write_jsonl

from .test_evaluate import save_adapter

PAIRS = [
    ("Question: is it?\nAnswer:", " no"),
    ("Question: is it?\nAnswer:", " yes"),
    ("A much longer context that pads the others in its batch", " and a long continuation"),
    ("So Sarah", " always got the easier cases."),
    ("x", " y"),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    model_dir = tiny_model_dir(root / "model")
    return model_dir, save_adapter(model_dir, root / "adapter")


def loglik_instances(pairs=PAIRS):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def scores(lm, pairs=PAIRS):
    return [score for score, _ in lm.loglikelihood(loglik_instances(pairs), disable_tqdm=True)]


def harness(adapter=None, pretrained=None, **kwargs):
    return ReftLM(adapter=str(adapter) if adapter else None, pretrained=pretrained, device="cpu",
                  **kwargs)  # fmt: skip


def test_a_batch_scores_as_its_rows_one_at_a_time(folders):
    _, adapter = folders
    batched = scores(harness(adapter, batch_size=4))
    alone = scores(harness(adapter, batch_size=1, logits_cache=False))
    assert batched == pytest.approx(alone, abs=1e-4)


def test_scores_equal_reft_evals_own_loglik_scorer(folders):
    _, adapter = folders
    lm = harness(adapter, batch_size=3)
    requests = []
    for context, continuation in PAIRS:
        whole = lm.tok_encode(context + continuation)
        split = len(lm.tok_encode(context))
        requests.append(Request(whole[:split], whole[split:]))
    ours = continuation_logliks(lm.subject, requests, batch_size=2)
    assert scores(lm) == pytest.approx(ours, abs=1e-4)


def test_the_adapter_changes_the_scores(folders):
    model_dir, adapter = folders
    assert scores(harness(adapter)) != pytest.approx(scores(harness(pretrained=str(model_dir))))


def test_interventions_land_on_the_context_only(folders, monkeypatch):
    _, adapter = folders
    lm = harness(adapter, batch_size=5)
    reft = lm.subject.model
    seen = []
    make_plan = reft._make_plan

    def spy(mask, prompt_lengths, explicit, names):
        plan = make_plan(mask, prompt_lengths, explicit, names)
        seen.append((mask, prompt_lengths, plan["default"]))
        return plan

    monkeypatch.setattr(reft, "_make_plan", spy)
    scores(lm)
    contexts = sorted(len(lm.tok_encode(context)) for context, _ in PAIRS)
    (mask, prompt_lengths, positions) = seen[-1]
    assert sorted(prompt_lengths.tolist()) == contexts
    for group in positions.values():
        for row in range(mask.shape[0]):
            used = group.index[row][group.mask[row]]
            assert used.numel() > 0
            assert int(used.max()) < int(prompt_lengths[row])  # never continuation or padding


def test_an_unknown_row_is_a_clear_error():
    index = ContextLengths([(None, [5, 6], [7, 8])], max_length=16)
    assert index.rows(torch.tensor([[5, 6, 7, 0]]))[1].tolist() == [2]
    with pytest.raises(ReftError, match="matches none of the requests"):
        index.rows(torch.tensor([[5, 9, 7]]))


def test_generation_in_a_batch_equals_one_prompt_at_a_time(folders):
    _, adapter = folders
    prompts = ["Question: is it?\nAnswer:", "A much longer prompt that pads the others", "x"]
    instances = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 6}), i)
        for i, p in enumerate(prompts)
    ]
    batched = harness(adapter, batch_size=3).generate_until(instances, disable_tqdm=True)
    lm = harness(adapter, batch_size=1)
    alone = lm.generate_until(instances, disable_tqdm=True)
    assert batched == alone
    ids = torch.tensor([lm.tok_encode(prompts[2])])
    direct = lm.subject.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert alone[2] == lm.tok_decode(direct[0, ids.shape[1] :].tolist()).split("\n\n")[0]


def test_bad_model_args_are_one_line_errors(folders, tmp_path):
    with pytest.raises(ReftError, match="needs adapter=DIR"):
        harness()
    with pytest.raises(ReftError, match="does not exist"):
        harness(tmp_path / "missing")
    with pytest.raises(ReftError, match="remote code"):
        harness(folders[1], trust_remote_code=True)


def test_a_lora_folder_scores_through_hflms_own_path(tmp_path):
    tiny_model_dir(tmp_path / "llama")
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    model = build(lora_run(tmp_path, tmp_path / "unused")).model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=3.0)
    model.save_pretrained(tmp_path / "lora")
    lm = harness(tmp_path / "lora", batch_size=3)
    assert lm.subject.is_lora
    base = scores(harness(pretrained=str(tmp_path / "llama")))
    assert scores(lm) != pytest.approx(base)
    assert scores(lm) == pytest.approx(scores(harness(tmp_path / "lora", batch_size=1)), abs=1e-4)
