"""On the same rows, `reft eval --scoring loglik` and lm-eval pick the same answer option, for the
embedded SmolLM2 and for a ReFT adapter on it (random weights, strong enough to change picks; the
positions are what is checked). bench/harness_crosscheck.py runs more rows and a trained adapter."""

import pytest
import torch

pytest.importorskip("lm_eval")

from reft_cli import ReftModel
from reft_cli.config.shipped import find_config
from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.base_models import load_model
from reft_cli.evaluation.harness.crosscheck import crosscheck
from tests.conftest import needs_smollm2

pytestmark = [pytest.mark.slow, needs_smollm2]
SMOLLM2 = "smollm2-135m-instruct"
ROWS = 10


def test_the_base_models_picks_agree_row_by_row():
    config = find_config("commonsense-loglik")
    for task, rows in crosscheck(["piqa", "arc_easy"], ROWS, config=config, device="cpu").items():
        assert rows.reft == rows.harness, f"{task}: rows {rows.disagreeing_rows} differ"


def test_an_adapters_picks_agree_row_by_row(tmp_path):
    config = ReftConfig.for_layers([6, 18], 30, rank=4, positions="f2+l2", base_model=SMOLLM2)
    model = ReftModel(load_model(SMOLLM2), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=0.5)
    model.save_pretrained(tmp_path / "adapter")
    checked = crosscheck(["arc_easy"], ROWS, adapter=tmp_path / "adapter", device="cpu")
    rows = checked["arc_easy"]
    assert rows.reft == rows.harness, f"rows {rows.disagreeing_rows} differ"
