"""The LoRA baseline (`method: lora`): trained by `reft train`, saved in PEFT's format, loaded by
`reft eval` and `reft generate`, refused where only ReFT makes sense."""

import hashlib
import json
import shutil

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from reft_cli import ReftConfig, get_reft_model
from reft_cli.config.reader import load_config
from reft_cli.config.schema import GenerateConfig, ModelConfig, RunConfig
from reft_cli.config.validation import ConfigError
from reft_cli.engine.adapter_io import current_umask
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.loading import load_adapters
from reft_cli.engine.lora import LoraModel
from reft_cli.engine.reft_model import BASE
from reft_cli.errors import ReftError
from reft_cli.evaluation.evaluate import EvalOptions, run_eval
from reft_cli.evaluation.predict import load_for_eval
from reft_cli.generation.answers import Answerer
from reft_cli.generation.frontends import parse_adapter_specs
from reft_cli.interop.export import export_adapter
from reft_cli.training.setup import build
from reft_cli.training.trainer import Trainer
from tests.cli.test_cli import reft
from tests.conftest import quick_train, tiny_model_dir

QUIET = Console(quiet=True)
ROWS = [{"prompt": f"say {w}", "response": f"{w} {w}!"} for w in "abcdefghijklmnop"]
# The tiny Llama: hidden 32, 4 query heads and 2 key/value heads of 8, MLP 64, 3 layers.
HIDDEN, KV, MLP, LAYERS = 32, 2 * 8, 64, 3


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    tiny_model_dir(root / "llama")
    write_jsonl(root / "train.jsonl", ROWS)
    return root


def lora_run(root, out, lora=None, data=None, **train) -> RunConfig:
    return RunConfig.from_dict(
        {
            "method": "lora",
            "model": {"name_or_path": str(root / "llama")},
            "data": {
                "dataset": str(root / "train.jsonl"),
                "template": "{prompt}:",
                "max_length": 64,
                **(data or {}),
            },
            "lora": lora or {},
            "train": quick_train(out, **train),
        }
    )


def logged(out, key="loss"):
    lines = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    return {e["step"]: e[key] for e in lines if key in e}


@pytest.fixture(scope="module")
def trained(root):
    """A 12-step LoRA run: (the trained model, its output folder)."""
    out = root / "run"
    trainer = Trainer(lora_run(root, out, max_steps=12), QUIET)
    trainer.train()
    return trainer.model.eval(), out


@pytest.fixture(scope="module")
def strong(root):
    """A LoRA folder with large random B matrices, so that its answers differ from the base's."""
    model = build(lora_run(root, root / "unused")).model
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=3.0)
    model.save_pretrained(root / "strong")
    return root / "strong"


def batch_of(texts, tokenizer):
    ids = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return input_ids, mask


# ---------------------------------------------------------------------------- training


def test_a_lora_run_lowers_the_loss_and_leaves_the_base_weights_alone(root, trained):
    model, out = trained
    losses = logged(out)
    assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1]
    for name in ("adapter_config.json", "adapter_model.safetensors", "reft_lora.json"):
        assert (out / name).is_file(), name
    assert not (out / "reft_config.json").exists() and not (out / "reft_model.safetensors").exists()
    assert "LoRA r=8" in (out / "README.md").read_text()
    base = dict(load_model(str(root / "llama")).named_parameters())
    frozen = {
        name.removeprefix("base_model.model.").replace(".base_layer", ""): param
        for name, param in model.peft.named_parameters()
        if "lora_" not in name
    }
    assert sorted(frozen) == sorted(base)
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    assert any(p.abs().sum() > 0 for n, p in model.peft.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize(
    ("targets", "per_layer"),
    [
        (None, (HIDDEN + HIDDEN) + (HIDDEN + KV)),  # PEFT's Llama default: q_proj, v_proj
        ("q_proj,v_proj", (HIDDEN + HIDDEN) + (HIDDEN + KV)),
        (["k_proj"], HIDDEN + KV),
        # q, k, v, o, gate, up, down; never the lm head
        ("all-linear", 2 * HIDDEN + 2 * (HIDDEN + KV) + 2 * HIDDEN + 3 * (HIDDEN + MLP)),
    ],
)
def test_trainable_parameters_are_r_times_in_plus_out_of_each_target(root, targets, per_layer):
    model = build(lora_run(root, root / "unused", lora={"r": 4, "target_modules": targets})).model
    lora, head, base = model.count_parameters()
    assert lora == 4 * per_layer * LAYERS
    assert head == 0 and base == sum(
        p.numel() for p in load_model(str(root / "llama")).parameters()
    )
    assert lora == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_dry_run_shows_the_lora_and_its_parameter_count(root):
    from reft_cli.training.dry_run import show

    console = Console(record=True, width=200)
    show(build(lora_run(root, root / "unused")), console)
    text = console.export_text()
    count = 8 * ((HIDDEN + HIDDEN) + (HIDDEN + KV)) * LAYERS
    assert f"trainable parameters: {count:,}" in text
    assert "LoRA r=8, alpha 16, dropout 0 on 6 modules (q_proj, v_proj)" in text
    assert "intervened" not in text


def test_the_frozen_prefix_cache_never_applies_to_lora(root, tmp_path):
    trainer = Trainer(lora_run(root, tmp_path / "run", cache_frozen_prefix=True), QUIET)
    assert trainer.prefix_cache is None


def test_resume_continues_exactly(root, tmp_path):
    lora = {"dropout": 0.1}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    Trainer(lora_run(root, full, lora, max_steps=8, per_device_train_batch_size=3), QUIET).train()
    run = lora_run(
        root,
        resumed,
        lora,
        max_steps=8,
        per_device_train_batch_size=3,
        resume_from_checkpoint=str(full / "checkpoint-3"),
    )
    Trainer(run, QUIET).train()
    after = logged(resumed)
    assert sorted(after) == [4, 5, 6, 7, 8]
    for step, loss in after.items():
        assert loss == pytest.approx(logged(full)[step], abs=1e-6)
    a = load_file(full / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradient_checkpointing_gives_the_same_updates(root, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    Trainer(lora_run(root, plain, max_steps=3), QUIET).train()
    Trainer(lora_run(root, checkpointed, max_steps=3, gradient_checkpointing=True), QUIET).train()
    a = load_file(plain / "adapter_model.safetensors")
    b = load_file(checkpointed / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert logged(plain)[3] == pytest.approx(logged(checkpointed)[3], abs=1e-6)


def test_the_best_checkpoint_becomes_the_adapter(root, tmp_path):
    out = tmp_path / "run"
    run = lora_run(
        root,
        out,
        data={"val_size": 4},
        max_steps=6,
        eval_steps=1,
        save_steps=100,
        metric_for_best_model="eval_loss",
        greater_is_better=True,  # the worst loss wins, so the kept step is not the last one
    )
    summary = Trainer(run, QUIET).train()
    losses = logged(out, "eval_loss")
    best = max(losses, key=losses.get)
    assert best < 6 and summary.best_checkpoint == out / f"checkpoint-{best}"
    final = load_file(out / "adapter_model.safetensors")
    kept = load_file(summary.best_checkpoint / "adapter_model.safetensors")
    assert sorted(final) == sorted(kept)
    assert all(torch.equal(final[k], kept[k]) for k in final)


def test_saved_files_get_the_usual_mode(trained):
    _, out = trained
    wanted = 0o666 & ~current_umask()
    for name in ("adapter_model.safetensors", "adapter_config.json", "reft_lora.json"):
        assert (out / name).stat().st_mode & 0o777 == wanted, name


# ---------------------------------------------------------------------------- loading


def test_saved_then_loaded_gives_identical_logits(root, trained):
    model, out = trained
    tokenizer = load_tokenizer(str(root / "llama"))
    ids, mask = batch_of(["say a:", "say hello there:"], tokenizer)
    with torch.no_grad():
        before = model(ids, mask).logits
        loaded = LoraModel.from_pretrained(out)(ids, mask).logits
        subject = load_for_eval(out, ModelConfig())
        through_eval = subject.logits(
            {"input_ids": ids, "attention_mask": mask, "prompt_lengths": mask.sum(1)}
        )
        plain = load_model(str(root / "llama"))(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(loaded, before) and torch.equal(through_eval, before)
    assert not torch.allclose(plain, before)  # the LoRA is in those logits
    assert subject.has_adapter and subject.task_type == "causal_lm"


def test_corrupt_or_mismatched_folders_give_one_line_errors(root, trained, tmp_path):
    _, out = trained

    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(out, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
        change(folder)
        return folder

    def drop_a_tensor(folder):
        tensors = load_file(folder / "adapter_model.safetensors")
        tensors.pop(sorted(tensors)[0])
        save_file(tensors, folder / "adapter_model.safetensors")

    def other_base(folder):
        tiny_model_dir(tmp_path / "wide-base", hidden_size=48)
        data = json.loads((folder / "reft_lora.json").read_text())
        data["base_model"] = str(tmp_path / "wide-base")
        (folder / "reft_lora.json").write_text(json.dumps(data))

    cases = {
        "missing": (
            lambda f: (f / "adapter_model.safetensors").unlink(),
            "adapter_model.safetensors is missing",
        ),
        "truncated": (
            lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x08\x00"),
            "is corrupt",
        ),
        "dropped": (drop_a_tensor, "does not match the LoRA settings"),
        "bad-json": (lambda f: (f / "reft_lora.json").write_text("{"), "is not valid JSON"),
        "wide": (other_base, "does not fit this base model"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(ReftError, match=message) as err:
            LoraModel.from_pretrained(broken(name, change))
        assert "\n" not in str(err.value), name


# ---------------------------------------------------------------------------- eval and generate


def test_eval_scores_a_lora_folder(root, strong, tmp_path):
    boolq = write_jsonl(
        tmp_path / "boolq.jsonl",
        [
            {"instruction": f"q{i}?", "input": "", "output": "the correct answer is true"}
            | {"answer": "true"}
            for i in range(3)
        ],
    )
    report = run_eval(
        EvalOptions(
            adapter=strong, tasks=[f"boolq={boolq}"], max_new_tokens=4, output=tmp_path / "out"
        ),
        QUIET,
    )
    assert report["tasks"]["boolq"]["num_examples"] == 3
    assert report["base_model"].endswith("llama")
    weights = (strong / "adapter_model.safetensors").read_bytes()
    assert report["adapter"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    predictions = [json.loads(x) for x in (tmp_path / "out" / "predictions" / "boolq.jsonl").open()]
    # The reference: PEFT's own loader and transformers' greedy generate, one prompt at a time
    # (no padding), decoded without special tokens.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "llama")
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(root / "llama"), strong
    ).eval()
    expected = []
    for p in predictions:
        ids = tokenizer(p["prompt"], return_tensors="pt")
        with torch.no_grad():
            out = reference.generate(
                **ids,
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        # A character cut by the token limit is dropped (U+FFFD at the end is never an answer).
        text = tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
        expected.append(text.rstrip("\ufffd"))
    assert [p["generation"] for p in predictions] == expected


def test_generate_answers_with_the_lora_and_apart_with_the_base(root, strong):
    session = Answerer(load_adapters(parse_adapter_specs([str(strong)])))
    options = GenerateConfig(max_new_tokens=5)
    rows = [{"prompt": "say a"}, {"prompt": "say bcd"}, {"prompt": "say e"}]
    names = ["default", BASE, "default"]
    mixed = session.answer(names, rows, options)
    lora = session.answer(["default"] * 3, rows, options)
    base = session.answer([BASE] * 3, rows, options)
    assert mixed == [lora[0], base[1], lora[2]]
    tokenizer = load_tokenizer(str(root / "llama"))
    tokenizer.padding_side = "left"
    plain = load_model(str(root / "llama"))
    ids = tokenizer("say bcd:", return_tensors="pt")  # the longest row: no padding in the batch
    expected = plain.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert base[1] == [tokenizer.decode(expected[0, ids.input_ids.shape[1] :], True)]
    assert lora != base


def test_cli_generates_with_a_lora_folder(strong):
    result = reft(
        "generate",
        "--adapter",
        str(strong),
        "--prompt",
        "hello",
        "--compare",
        "--max-new-tokens",
        "6",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default" in result.stdout and "base model" in result.stdout


def test_reft_only_features_refuse_a_lora_folder(root, strong, tmp_path):
    config = ReftConfig.for_layers([0], 3, rank=2, base_model=str(root / "llama"))
    get_reft_model(load_model(str(root / "llama")), config).save_pretrained(tmp_path / "reft")
    with pytest.raises(ReftError, match=r"is a LoRA adapter.*generate with it alone"):
        load_adapters(parse_adapter_specs([f"a={tmp_path / 'reft'}", f"b={strong}"]))
    for format in ("pyreft", "hub"):
        with pytest.raises(ReftError, match="is a LoRA adapter; export writes ReFT adapters only"):
            export_adapter(strong, format, tmp_path / format)
        assert not (tmp_path / format).exists()


# ---------------------------------------------------------------------------- classification


def test_seq_cls_lora_trains_the_head_and_eval_uses_it(tmp_path):
    tiny_model_dir(tmp_path / "bert", "bert")
    rows = [{"sentence": f"{'good ' * (i % 3)}movie {i}", "label": i % 2} for i in range(12)]
    data = write_jsonl(tmp_path / "sst2.jsonl", rows)
    out = tmp_path / "run"
    run = RunConfig.from_dict(
        {
            "method": "lora",
            "model": {"name_or_path": str(tmp_path / "bert"), "task_type": "seq_cls"},
            "data": {"dataset": str(data), "template": "{sentence}"},
            "lora": {"r": 2},
            "train": {"max_steps": 4, "learning_rate": 1e-2, "output_dir": str(out)},
        }
    )
    trainer = Trainer(run, QUIET)
    lora, head, _ = trainer.model.count_parameters()
    assert head == HIDDEN * 2 + 2  # the classifier: weight and bias
    assert lora == 2 * ((HIDDEN + HIDDEN) * 2) * LAYERS  # PEFT's BERT default: query, value
    trainer.train()
    saved = load_file(out / "adapter_model.safetensors")
    start = load_model(str(tmp_path / "bert"), task_type="seq_cls", num_labels=2)
    assert not torch.equal(saved["base_model.model.classifier.weight"], start.classifier.weight)
    report = run_eval(
        EvalOptions(adapter=out, tasks=[f"sst2={data}"], split="validation", output=tmp_path / "e"),
        QUIET,
    )
    predictions = [json.loads(x) for x in (tmp_path / "e" / "predictions" / "sst2.jsonl").open()]
    model = LoraModel.from_pretrained(out)
    tokenizer = load_tokenizer(str(tmp_path / "bert"))
    for p, row in zip(predictions, rows, strict=True):
        ids = torch.tensor([tokenizer(row["sentence"])["input_ids"]])
        with torch.no_grad():
            assert p["prediction"] == model(ids, torch.ones_like(ids)).logits.argmax(-1).item()
    assert report["tasks"]["sst2"]["num_examples"] == len(rows)


# ---------------------------------------------------------------------------- config


def test_bad_lora_settings_are_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "method=lorra",
                "lora.r=0",
                "lora.dropout=1",
                "lora.target_modules=[]",
                "lora.alfa=4",
            ],
        )
    problems = err.value.problems
    assert len(problems) == 5
    assert any("method: 'lorra'" in p and "did you mean lora?" in p for p in problems)
    assert any(p.startswith("lora.r: 0") for p in problems)
    assert any(p.startswith("lora.dropout: 1") for p in problems)
    assert any(p.startswith("lora.target_modules: []") for p in problems)
    assert any("did you mean lora.alpha?" in p for p in problems)


def test_target_modules_that_match_nothing_name_the_linear_layers(root):
    with pytest.raises(ReftError) as err:
        build(lora_run(root, root / "unused", lora={"target_modules": ["q_proj", "query"]}))
    message = str(err.value)
    assert message.startswith("lora.target_modules: query match no module of LlamaForCausalLM")
    assert "down_proj" in message and "q_proj" in message and "\n" not in message
