"""`reft train`'s loop on tiny models: outputs, exact resume, accumulation, eval, failures."""

import io
import json
import math

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from reft_cli import ReftModel
from reft_cli.config.schema import RunConfig
from reft_cli.errors import ReftError
from reft_cli.training.prefix_cache import CacheState
from reft_cli.training.trainer import Trainer
from tests.conftest import quick_train, tiny_model_dir
from tests.training.host_reads import spy_host_reads

ROWS = [{"prompt": f"say {w}", "response": f"{w} {w}!"} for w in "abcdefghijklmnop"]


def config(
    model_dir, data_file, out, dropout=0.1, positions="f1+l1", layers=(0, 2), **train
) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"dataset": str(data_file), "template": "{prompt}:", "max_length": 64},
            "intervention": {
                "layers": list(layers),
                "rank": 2,
                "positions": positions,
                "dropout": dropout,
            },
            "train": quick_train(out, **train),
        }
    )


def fit(run: RunConfig):
    return Trainer(run, Console(quiet=True)).train()


def logged(out, key="loss"):
    lines = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    return {e["step"]: e[key] for e in lines if key in e}


def weights(out):
    return load_file(out / "reft_model.safetensors")


def test_a_run_writes_the_adapter_folder(llama_dir, data_file, tmp_path):
    summary = fit(config(llama_dir, data_file, tmp_path / "run", max_steps=12))
    out = tmp_path / "run"
    for name in ("reft_config.json", "reft_model.safetensors", "training_config.yaml", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    losses = logged(out)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]
    assert summary.steps == 12 and summary.final_loss == pytest.approx(losses[12])
    assert json.loads((out / "reft_config.json").read_text())["prompt_template"] == "{prompt}:"
    assert ReftModel.from_pretrained(out).reft_config.base_model == str(llama_dir)


def test_same_seed_same_result(llama_dir, data_file, tmp_path):
    fit(config(llama_dir, data_file, tmp_path / "a"))
    fit(config(llama_dir, data_file, tmp_path / "b"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fit(config(llama_dir, data_file, tmp_path / "c", seed=4))
    assert not all(torch.equal(a[k], v) for k, v in weights(tmp_path / "c").items())


def test_resume_continues_exactly(llama_dir, data_file, tmp_path):
    full = tmp_path / "full"
    fit(
        config(llama_dir, data_file, full, max_steps=8, save_steps=3, per_device_train_batch_size=3)
    )
    resumed = tmp_path / "resumed"
    checkpoint = full / "checkpoint-3"
    fit(
        config(
            llama_dir,
            data_file,
            resumed,
            max_steps=8,
            save_steps=3,
            per_device_train_batch_size=3,
            resume_from_checkpoint=str(checkpoint),
        )
    )
    after = logged(resumed)
    assert sorted(after) == [4, 5, 6, 7, 8]  # crosses an epoch boundary (16 rows / 3 = 6 steps)
    for step, loss in after.items():
        assert loss == pytest.approx(logged(full)[step], abs=1e-6)
    a, b = weights(full), weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_latest_takes_the_newest_checkpoint(llama_dir, data_file, tmp_path):
    out = tmp_path / "run"
    fit(config(llama_dir, data_file, out, max_steps=6, save_steps=2))
    fit(
        config(
            llama_dir, data_file, out, max_steps=8, save_steps=2, resume_from_checkpoint="latest"
        )
    )
    assert sorted(logged(out)) == list(range(1, 9))  # log continues from checkpoint-6


def test_gradient_accumulation_equals_one_large_batch(llama_dir, data_file, tmp_path):
    fit(config(llama_dir, data_file, tmp_path / "big", per_device_train_batch_size=8, dropout=0))
    fit(
        config(
            llama_dir,
            data_file,
            tmp_path / "acc",
            dropout=0,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
        )
    )
    big, acc = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in big:
        torch.testing.assert_close(acc[k], big[k], atol=1e-5, rtol=1e-5)


def test_refuses_to_overwrite_another_run(llama_dir, data_file, tmp_path):
    out = tmp_path / "run"
    fit(config(llama_dir, data_file, out, max_steps=2))
    before = (out / "reft_model.safetensors").read_bytes()
    with pytest.raises(ReftError, match="already holds a run"):
        fit(config(llama_dir, data_file, out, max_steps=2))
    assert (out / "reft_model.safetensors").read_bytes() == before
    fit(config(llama_dir, data_file, out, max_steps=2, seed=9, overwrite_output_dir=True))
    assert (out / "reft_model.safetensors").read_bytes() != before


def test_nan_loss_stops_with_the_last_good_checkpoint(llama_dir, data_file, tmp_path, monkeypatch):
    import reft_cli.training.trainer as trainer

    real, calls = trainer.loss_sum, []

    def poisoned(*args):
        calls.append(1)
        total, count = real(*args)
        return (total * float("nan") if len(calls) == 4 else total), count

    monkeypatch.setattr(trainer, "loss_sum", poisoned)
    out = tmp_path / "run"
    with pytest.raises(
        ReftError, match=r"loss became nan at step 4; the last good checkpoint is .*checkpoint-3"
    ):
        fit(config(llama_dir, data_file, out, max_steps=6, save_steps=3))
    assert (out / "checkpoint-3" / "reft_model.safetensors").is_file()


def poison_step(monkeypatch, step):
    """Make the loss of training step `step` (1-based, one micro-batch a step) NaN."""
    import reft_cli.training.trainer as trainer

    real, calls = trainer.loss_sum, []

    def poisoned(*args):
        calls.append(1)
        total, count = real(*args)
        return (total * float("nan") if len(calls) == step else total), count

    monkeypatch.setattr(trainer, "loss_sum", poisoned)


def test_nan_between_logs_is_caught_at_the_next_log_with_its_own_step(
    llama_dir, data_file, tmp_path, monkeypatch
):
    poison_step(monkeypatch, 4)
    out = tmp_path / "run"
    with pytest.raises(
        ReftError, match=r"loss became nan at step 4; the last good checkpoint is .*checkpoint-3"
    ):
        fit(config(llama_dir, data_file, out, max_steps=8, save_steps=3, logging_steps=5))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (out / "reft_model.safetensors").exists()
    assert not (out / "trainer_log.jsonl").exists()  # step 5's log line was never written


def test_nan_before_a_checkpoint_is_caught_before_it_is_written(
    llama_dir, data_file, tmp_path, monkeypatch
):
    poison_step(monkeypatch, 2)
    out = tmp_path / "run"
    with pytest.raises(ReftError, match=r"loss became nan at step 2; no checkpoint was saved yet"):
        fit(config(llama_dir, data_file, out, max_steps=8, save_steps=3, logging_steps=10))
    assert not list(out.glob("checkpoint-*"))


def test_the_loss_is_read_back_only_at_logging_steps(llama_dir, data_file, tmp_path, monkeypatch):
    from reft_cli.training.device_io import LossWatch

    loop = Trainer(
        config(llama_dir, data_file, tmp_path / "run", max_steps=7, logging_steps=3, save_steps=9),
        Console(quiet=True),
    )
    read_at, in_step = [], []
    real_read, real_step = LossWatch.read, Trainer._step

    def read(self):
        read_at.append(loop.progress.global_step)
        return real_read(self)

    def step(self, micro):
        in_step.append(1)
        try:
            return real_step(self, micro)
        finally:
            in_step.pop()

    reads = []
    spy_host_reads(
        monkeypatch,
        lambda module: reads.append(module) if in_step and "reft_cli.training" in module else None,
    )
    monkeypatch.setattr(LossWatch, "read", read)
    monkeypatch.setattr(Trainer, "_step", step)
    summary = loop.train()
    assert read_at == [3, 6, 7, 7]  # the logging steps (and the last), then the end of the run
    assert sorted(logged(tmp_path / "run")) == [3, 6, 7] and summary.final_loss is not None
    # Inside a step only the frozen-state cache reads the host: twice per micro-batch, its layout
    # and the rows' example ids (this adapter, at layer 0's output from the first prompt token,
    # has block 0's output cached), plus on the first step the check that runs the cached path
    # once more and reads its error (the comparison lives in packing.py, shared with the packed
    # path's check); never the loop or the loss.
    checks = {"reft_cli.training.prefix_cache", "reft_cli.training.packing"}
    assert set(reads) <= checks and len(reads) == 7 * 2 + 3


def test_ctrl_c_saves_a_checkpoint_to_resume_from(llama_dir, data_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = Trainer._step
    calls = []

    def interrupted(self, micro):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, micro)

    monkeypatch.setattr(Trainer, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config(llama_dir, data_file, out, max_steps=6, save_steps=100))
    assert (out / "checkpoint-2" / "reft_model.safetensors").is_file()
    monkeypatch.setattr(Trainer, "_step", real)
    fit(
        config(
            llama_dir, data_file, out, max_steps=6, save_steps=100, resume_from_checkpoint="latest"
        )
    )
    assert sorted(logged(out)) == list(range(1, 7))


def test_eval_selects_the_best_checkpoint_and_keeps_it(llama_dir, data_file, tmp_path):
    out = tmp_path / "run"
    run = config(
        llama_dir,
        data_file,
        out,
        max_steps=8,
        eval_steps=2,
        save_steps=2,
        save_total_limit=1,
        metric_for_best_model="eval_loss",
    )
    run = RunConfig.from_dict({**run.to_dict(), "data": {**run.to_dict()["data"], "val_size": 4}})
    summary = fit(run)
    evals = logged(out, "eval_loss")
    assert sorted(evals) == [2, 4, 6, 8]
    best_step = min(evals, key=evals.get)
    assert summary.best_checkpoint == out / f"checkpoint-{best_step}"
    assert summary.best_checkpoint.is_dir()
    best = load_file(summary.best_checkpoint / "reft_model.safetensors")
    final = weights(out)
    assert all(torch.equal(best[k], final[k]) for k in best)  # the adapter is the best one


def test_sequence_classification_trains_a_head(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "bert", "bert", num_layers=2)
    rows = [{"text": f"{'good' if i % 2 else 'bad'} thing {i}", "label": i % 2} for i in range(16)]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunConfig.from_dict(
        {
            "model": {"name_or_path": str(model_dir), "task_type": "seq_cls"},
            "data": {"dataset": str(data), "template": "{text}", "val_size": 4},
            "intervention": {"layers": "all", "rank": 1, "positions": "f1"},
            "train": {"max_steps": 4, "output_dir": str(tmp_path / "out"), "eval_steps": 2},
        }
    )
    fit(run)
    assert any(k.startswith("head.") for k in weights(tmp_path / "out"))
    assert set(logged(tmp_path / "out", "eval_accuracy")) == {2, 4}
    for metric in ("eval_matthews_correlation", "eval_f1"):
        assert all(-1 <= v <= 1 for v in logged(tmp_path / "out", metric).values()), metric


def test_classification_metrics_match_the_scorers():
    from reft_cli.training.validation import _classification_metrics

    got = _classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], regression=False)
    assert got["accuracy"] == 0.75 and got["f1"] == pytest.approx(0.8)
    assert got["matthews_correlation"] == pytest.approx(1 / 3**0.5)
    reg = _classification_metrics([0.1, 0.4, 0.35, 0.8], [0.0, 0.5, 0.3, 1.0], regression=True)
    assert set(reg) == {"pearson", "spearmanr"} and reg["spearmanr"] == pytest.approx(1.0)


def test_missing_data_file_is_a_clear_error(llama_dir, tmp_path):
    run = config(llama_dir, tmp_path / "nope.jsonl", tmp_path / "out")
    with pytest.raises(ReftError, match=r"nope\.jsonl"):
        fit(run)
    assert not (tmp_path / "out" / "reft_config.json").exists()


@pytest.mark.parametrize("settings", [{"bf16": True}, {}])
def test_bf16_runs_keep_fp32_intervention_weights(llama_dir, data_file, tmp_path, settings):
    run = config(llama_dir, data_file, tmp_path / "run", max_steps=3, **settings)
    data = run.to_dict()
    data["model"]["dtype"] = "bfloat16"
    summary = fit(RunConfig.from_dict(data))
    assert summary.final_loss is not None and math.isfinite(summary.final_loss)  # not NaN or inf
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "run").values())


def test_missing_tracker_package_is_a_clear_error(llama_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr("reft_cli.training.trainer.is_tensorboard_available", lambda: False)
    with pytest.raises(ReftError, match="pip install tensorboard"):
        fit(config(llama_dir, data_file, tmp_path / "run", report_to="tensorboard"))


def test_frozen_prefix_cache_switch_gives_the_same_run(llama_dir, data_file, tmp_path):
    runs = {}
    for switch in (True, False):
        out = tmp_path / str(switch)
        loop = Trainer(
            config(llama_dir, data_file, out, positions="l2", cache_frozen_prefix=switch),
            Console(quiet=True),
        )
        loop.train()
        runs[switch] = (logged(out), weights(out))
        # Layer 0 is edited at its output, so block 0's output is cached, and the prefix with the
        # switch on, all run long (no step back to the plain path), with the rows packed.
        assert loop.prefix_cache.state == CacheState(
            on=True, prefix=switch, layers=True, reason="", packed=True
        )
    for step, loss in runs[False][0].items():
        assert runs[True][0][step] == pytest.approx(loss, abs=1e-5)
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, atol=1e-5, rtol=1e-5)


def varied_rows(folder, letters: str):
    """A data file of one row per letter, its prompt and response of many lengths."""
    path = folder / "varied.jsonl"
    rows = [
        {"prompt": "say " + w * (i % 5 + 1), "response": w * (i % 7 + 1)}
        for i, w in enumerate(letters)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SPEED_UPS = (
    "cache_frozen_prefix",
    "cache_frozen_layers",
    "lm_head_on_targets",
    "fused_head_loss",
    "group_by_length",
    "packing",
)


def test_the_speed_ups_give_the_same_run_as_the_plain_path(llama_dir, tmp_path, monkeypatch):
    import reft_cli.training.trainer as trainer

    real, regrouped = trainer.group_by_length, []

    def spy(micro, lengths):
        grouped = real(micro, lengths)
        regrouped.append(grouped != micro)
        return grouped

    monkeypatch.setattr(trainer, "group_by_length", spy)
    # Rows of many lengths and accumulation make length grouping regroup rows; layer 1 leaves
    # block 0 to the cache.
    varied = varied_rows(tmp_path, "abcdefghijklmnop")
    runs = {}
    for switch in (True, False):
        out = tmp_path / str(switch)
        settings = dict.fromkeys(SPEED_UPS, switch) | {"gradient_accumulation_steps": 2}
        run = config(llama_dir, varied, out, dropout=0.0, positions="l2", layers=(1, 2), **settings)
        loop = Trainer(run, Console(quiet=True))
        loop.train()
        runs[switch] = (logged(out), weights(out))
        if switch:  # the cache ran from layer 1, not stepping back to the plain path
            assert loop.prefix_cache.active and loop.prefix_cache.start == 2
            assert loop.prefix_cache.state == CacheState(
                on=True, prefix=True, layers=True, reason="", packed=True
            )
            assert loop.head_on_targets and loop.fused_head is not None
        else:
            assert loop.fused_head is None
    assert any(regrouped)
    for step, loss in runs[False][0].items():
        assert runs[True][0][step] == pytest.approx(loss, abs=1e-5)
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, atol=1e-5, rtol=1e-5)


def test_under_dropout_the_speed_ups_draw_the_plain_paths_masks(llama_dir, tmp_path):
    """Rows keep their order in a step's one packed call, so the interventions' dropout draws the
    same masks for the same rows as on the plain path, and the runs are the same."""
    varied = varied_rows(tmp_path, "abcdefgh")
    runs = {}
    for switch in (True, False):
        out = tmp_path / str(switch)
        run = config(
            llama_dir,
            varied,
            out,
            dropout=0.3,
            positions="l2",
            layers=(1, 2),
            **dict.fromkeys(SPEED_UPS, switch),
        )
        Trainer(run, Console(quiet=True)).train()
        runs[switch] = logged(out)
    assert len(set(runs[False].values())) > 1
    for step, loss in runs[False].items():
        assert runs[True][step] == pytest.approx(loss, abs=1e-5)


def test_eval_loss_with_the_head_on_targets_equals_the_full_head(
    llama_dir, data_file, tmp_path, monkeypatch
):
    import reft_cli.training.validation as validation

    run = config(llama_dir, data_file, tmp_path / "run", dropout=0.0, max_steps=2)
    loop = Trainer(run, Console(quiet=True))
    loop.train()
    real, shapes = validation.forward, {}

    def spy(model, batch, task_type, head_on_targets):
        logits, targets = real(model, batch, task_type, head_on_targets)
        shapes.setdefault(head_on_targets, []).append(tuple(logits.shape))
        return logits, targets

    monkeypatch.setattr(validation, "forward", spy)
    examples = loop.data.train
    kept, full = (
        validation.evaluate(
            loop.accelerator, loop.wrapped, examples, loop.setup.tokenizer, run, flag
        )
        for flag in (True, False)
    )
    assert kept["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)
    # One row of logits per response target, against (rows, tokens, vocab) for the full head.
    assert all(len(shape) == 2 for shape in shapes[True])
    assert all(len(shape) == 3 for shape in shapes[False])


def test_a_cache_on_disk_gives_the_same_run_and_leaves_no_files(llama_dir, data_file, tmp_path):
    runs = {}
    for budget in ("ram", "disk"):
        out, log = tmp_path / budget, io.StringIO()
        settings = (
            {"frozen_cache_budget_mb": 0, "frozen_cache_disk_mb": 64} if budget == "disk" else {}
        )
        run = config(llama_dir, data_file, out, positions="l2", layers=(1, 2), **settings)
        loop = Trainer(run, Console(file=log, width=300))
        loop.train()
        runs[budget] = (logged(out), weights(out), log.getvalue())
        assert loop.prefix_cache.state == CacheState(
            on=True, prefix=True, layers=True, reason="", packed=True
        )
    assert "16 on disk" in runs["disk"][2] and "16 in RAM" in runs["ram"][2]
    assert not list((tmp_path / "disk").glob(".frozen-cache-*"))
    assert runs["disk"][0] == runs["ram"][0]
    for key, value in runs["ram"][1].items():
        torch.testing.assert_close(runs["disk"][1][key], value, atol=0, rtol=0)


def test_a_bad_config_never_costs_the_previous_run(llama_dir, data_file, tmp_path):
    out = tmp_path / "run"
    fit(config(llama_dir, data_file, out, max_steps=2))
    before = (out / "reft_model.safetensors").read_bytes()
    with pytest.raises(ReftError):
        fit(config(llama_dir, tmp_path / "missing.jsonl", out, overwrite_output_dir=True))
    assert (out / "reft_model.safetensors").read_bytes() == before


def test_without_a_terminal_each_logged_step_prints_a_plain_line(llama_dir, data_file, tmp_path):
    """CI logs and schedulers get progress as it happens, not a bar drawn once at the end."""
    out = io.StringIO()
    run = config(llama_dir, data_file, tmp_path / "run", max_steps=4, logging_steps=2)
    Trainer(run, Console(file=out, width=200, force_terminal=False)).train()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("train step")]
    losses = logged(tmp_path / "run")
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]
    for line, step in zip(lines, (2, 4), strict=True):
        assert f"loss {losses[step]:.4f}" in line and "it/s ETA" in line
    assert "━" not in out.getvalue()  # nor the bar's last frame


def test_a_terminal_gets_the_bar_and_no_plain_lines(llama_dir, data_file, tmp_path):
    out = io.StringIO()
    run = config(llama_dir, data_file, tmp_path / "run", max_steps=2, logging_steps=1)
    Trainer(run, Console(file=out, width=200, force_terminal=True)).train()
    assert "train step" not in out.getvalue() and "━" in out.getvalue()
