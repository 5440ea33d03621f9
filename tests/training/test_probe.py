"""method: probe — the classification head alone on the frozen model (the GLUE linear-probe baseline)."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from reft_cli.config.schema import RunConfig
from reft_cli.config.validation import ConfigError
from reft_cli.engine.base_models import load_model
from reft_cli.engine.reft_model import ReftModel
from reft_cli.evaluation.evaluate import EvalOptions, run_eval
from reft_cli.training.trainer import Trainer
from tests.conftest import tiny_model_dir

QUIET = Console(quiet=True)


def test_a_probe_trains_only_the_head_and_reloads(tmp_path):
    tiny_model_dir(tmp_path / "bert", "bert")
    rows = [{"sentence": f"{'good ' * (i % 3)}movie {i}", "label": i % 2} for i in range(12)]
    data = tmp_path / "sst2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    run = RunConfig.from_dict(
        {
            "method": "probe",
            "model": {"name_or_path": str(tmp_path / "bert"), "task_type": "seq_cls"},
            "data": {"dataset": str(data), "template": "{sentence}"},
            "train": {"max_steps": 4, "learning_rate": 1e-2, "output_dir": str(out)},
        }
    )
    trainer = Trainer(run, QUIET)
    interventions, head, _ = trainer.model.count_parameters()
    assert interventions == 0 and head > 0
    start = load_model(str(tmp_path / "bert"), task_type="seq_cls", num_labels=2)
    trainer.train()
    model = ReftModel.from_pretrained(out, num_labels=2)
    assert model.reft_config.interventions == []
    assert not torch.equal(model.model.classifier.weight, start.classifier.weight)
    # everything but the head is the frozen base model
    for name, param in start.named_parameters():
        if not name.startswith("classifier"):
            assert torch.equal(param, model.model.get_parameter(name)), name
    report = run_eval(
        EvalOptions(adapter=out, tasks=[f"sst2={data}"], split="validation", output=tmp_path / "e"),
        QUIET,
    )
    assert report["tasks"]["sst2"]["num_examples"] == len(rows)


def test_a_probe_needs_a_classifier():
    with pytest.raises(ConfigError, match="method: probe trains a classification head"):
        RunConfig.from_dict({"method": "probe"})
