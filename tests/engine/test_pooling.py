"""model.pooling: mean — a classifier's head reads the mean of the last states over the real tokens."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from reft_cli.config.schema import RunConfig
from reft_cli.config.validation import ConfigError
from reft_cli.engine.pooling import apply_pooling, masked_mean
from reft_cli.evaluation.predict import load_for_eval
from reft_cli.training.trainer import Trainer
from tests.conftest import tiny_model, tiny_model_dir

QUIET = Console(quiet=True)


def test_masked_mean_skips_padding():
    states = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(states, torch.tensor([[1, 1, 0]])).item() == 2.0


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_the_head_reads_the_mean_of_the_real_tokens(model_type):
    model = tiny_model(model_type)
    apply_pooling(model, "mean")
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        pooled = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
        plain = tiny_model(model_type)
        states = plain.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = masked_mean(states, mask).unsqueeze(1)
        head = plain.classifier(mean) if model_type == "roberta" else None
        if model_type == "bert":
            head = plain.classifier(plain.bert.pooler(mean))
    torch.testing.assert_close(pooled, head)
    torch.testing.assert_close(pooled[1:], alone)  # padding changes nothing


def test_mean_pooling_is_for_classifiers():
    with pytest.raises(ConfigError, match=r"model\.pooling: mean is what a classification head"):
        RunConfig.from_dict({"model": {"pooling": "mean"}})


@pytest.mark.parametrize("method", ["reft", "lora"])
def test_a_trained_classifier_reloads_with_its_pooling(tmp_path, method):
    tiny_model_dir(tmp_path / "bert", "bert")
    rows = [{"sentence": f"{'good ' * (i % 3)}movie {i}", "label": i % 2} for i in range(8)]
    data = tmp_path / "sst2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunConfig.from_dict(
        {
            "method": method,
            "model": {
                "name_or_path": str(tmp_path / "bert"),
                "task_type": "seq_cls",
                "pooling": "mean",
            },
            "data": {"dataset": str(data), "template": "{sentence}"},
            "intervention": {"layers": "all", "rank": 1, "positions": "f2+l2"},
            "lora": {"r": 1, "target_modules": "value"},
            "train": {"max_steps": 2, "learning_rate": 1e-2, "output_dir": str(tmp_path / "run")},
        }
    )
    trainer = Trainer(run, QUIET)
    trainer.train()
    batch = {"input_ids": torch.tensor([[3, 40, 50, 60, 70]]), "attention_mask": torch.ones(1, 5)}
    if method == "reft":
        batch["prompt_lengths"] = torch.tensor([5])
    loaded = load_for_eval(tmp_path / "run", run.model, device="cpu")
    trained = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch).logits, trained(**batch).logits)
    assert getattr(loaded.base_model, "_reft_pooling", None) == "mean"
