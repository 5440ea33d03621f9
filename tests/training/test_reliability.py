"""The trainer keeps the user's files and its own checkpoints safe: foreign folders, locks,
interrupts mid-step, weights gone non-finite, SIGTERM."""

import pytest

from reft_cli.errors import ReftError
from tests.training.test_trainer import config, fit, logged


def test_training_into_a_folder_of_the_users_files_refuses_and_keeps_them(
    llama_dir, data_file, tmp_path
):
    out = tmp_path / "p"
    out.mkdir()
    (out / "README.md").write_text("# mine\n")
    (out / "loss_curve.png").write_bytes(b"my picture")
    with pytest.raises(ReftError, match="is not empty and holds no reft run"):
        fit(config(llama_dir, data_file, out, max_steps=2))
    assert (out / "README.md").read_text() == "# mine\n"
    assert (out / "loss_curve.png").read_bytes() == b"my picture"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "loss_curve.png"]


def test_a_second_run_into_a_locked_folder_fails_at_once(llama_dir, data_file, tmp_path):
    from reft_cli.training.guards import RunLock

    out = tmp_path / "run"
    holder = RunLock(out)
    holder.acquire()  # another run, training into `out`
    try:
        with pytest.raises(ReftError, match=r"run is held by another reft run"):
            fit(config(llama_dir, data_file, out, max_steps=2))
        assert [p.name for p in out.iterdir()] == [".reft.lock"]
    finally:
        holder.release()
    fit(config(llama_dir, data_file, out, max_steps=2))  # free again once the other run ends
    with pytest.raises(ReftError, match="already holds a run"):
        fit(config(llama_dir, data_file, out, max_steps=2))  # and the lock was released after it


def stop_at_micro_batch(monkeypatch, call: int, stop) -> None:
    """Call `stop()` inside the loss of the `call`-th micro-batch (1-based) of the run."""
    import reft_cli.training.trainer as trainer

    real, calls = trainer.loss_sum, []

    def stopping(*args):
        calls.append(1)
        if len(calls) == call:
            stop()
        return real(*args)

    monkeypatch.setattr(trainer, "loss_sum", stopping)


def raise_interrupt() -> None:
    raise KeyboardInterrupt


def test_a_stop_mid_step_resumes_to_exactly_the_uninterrupted_losses(
    llama_dir, data_file, tmp_path, monkeypatch
):
    settings = {"max_steps": 6, "save_steps": 100, "gradient_accumulation_steps": 2}
    full, out = tmp_path / "full", tmp_path / "run"
    fit(config(llama_dir, data_file, full, dropout=0.3, **settings))
    stop_at_micro_batch(monkeypatch, 6, raise_interrupt)  # step 3's second micro-batch
    with pytest.raises(KeyboardInterrupt):
        fit(config(llama_dir, data_file, out, dropout=0.3, **settings))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.undo()
    (out / ".checkpoint-9.x1y2.tmp").mkdir()  # as a run killed while writing would leave it
    fit(config(llama_dir, data_file, out, dropout=0.3, resume_from_checkpoint="latest", **settings))
    assert logged(out) == logged(full)
    assert not (out / ".checkpoint-9.x1y2.tmp").exists()


def test_sigterm_saves_a_checkpoint_like_ctrl_c(llama_dir, data_file, tmp_path, monkeypatch):
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    stop_at_micro_batch(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(config(llama_dir, data_file, out, max_steps=6, save_steps=100))
    assert (out / "checkpoint-2" / "reft_model.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_during_the_update_waits_until_the_step_is_counted():
    import os
    import signal

    from reft_cli.training.guards import StopSignals

    stops, done = StopSignals(), []
    with stops.active(), pytest.raises(KeyboardInterrupt), stops.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("counted")
    assert done == ["counted"]


def test_weights_gone_huge_are_never_saved_and_the_last_finite_checkpoint_is_named(
    llama_dir, data_file, tmp_path
):
    out = tmp_path / "run"
    # warm-up makes step 1's learning rate 0 (finite weights) and step 2's ~3e29
    run = config(
        llama_dir, data_file, out, learning_rate=1e30, warmup_ratio=0.5, save_steps=1, max_steps=6
    )
    with pytest.raises(
        ReftError,
        match=r"weights became non-finite or absurdly large .* by step 2; the last checkpoint "
        r"with finite weights is .*checkpoint-1; lower train.learning_rate",
    ):
        fit(run)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "reft_model.safetensors").exists()
