"""Training state: resuming after an interruption repeats the uninterrupted run bit for bit."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from reft_cli.engine.folder_names import OPTIMIZER_NAME, RNG_NAME, TRAINING_STATE_NAME
from reft_cli.errors import ReftError
from reft_cli.training.train_state import (
    Progress,
    capture_rng,
    load_training_state,
    save_training_state,
)

FILES = [OPTIMIZER_NAME, RNG_NAME, TRAINING_STATE_NAME]


def setup(seed, two_groups=False):
    """A small model, AdamW with weight decay and a linear warmup schedule; `seed` sets the init."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    if two_groups:
        groups = [
            {"params": model[0].parameters(), "lr": 1e-2},
            {"params": model[2].parameters(), "lr": 3e-3, "weight_decay": 0.0},
        ]
    else:
        groups = model.parameters()
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1, amsgrad=False)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=3, num_training_steps=20)
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler):
    """One step on a batch drawn from torch's global RNG, as a shuffled loader or dropout would."""
    x, y = torch.randn(16, 8), torch.randn(16, 3)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item(), scheduler.get_last_lr(), [p.detach().clone() for p in model.parameters()]


def interrupted_and_resumed(tmp_path, two_groups=False):
    """Run 5 steps, checkpoint, run 5 more; then resume a fresh run from the checkpoint for 5."""
    model, optimizer, scheduler = setup(seed=0, two_groups=two_groups)
    for _ in range(5):
        train_step(model, optimizer, scheduler)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    save_training_state(tmp_path, optimizer, scheduler, Progress(global_step=5))
    uninterrupted = [train_step(model, optimizer, scheduler) for _ in range(5)]

    model, optimizer, scheduler = setup(seed=1, two_groups=two_groups)  # also moves the RNG on
    model.load_state_dict(load_file(tmp_path / "model.safetensors"))
    load_training_state(tmp_path, optimizer, scheduler)
    resumed = [train_step(model, optimizer, scheduler) for _ in range(5)]
    return uninterrupted, resumed


def assert_same_steps(uninterrupted, resumed):
    for (loss_a, lrs_a, params_a), (loss_b, lrs_b, params_b) in zip(
        uninterrupted, resumed, strict=True
    ):
        assert loss_a == loss_b
        assert lrs_a == lrs_b
        assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))


def test_resumed_run_is_bit_identical_to_uninterrupted_run(tmp_path):
    uninterrupted, resumed = interrupted_and_resumed(tmp_path)
    assert_same_steps(uninterrupted, resumed)
    lrs = [lrs[0] for _, lrs, _ in resumed]
    assert len(set(lrs)) == 5  # the schedule moves, so a scheduler left at its start would differ


def test_two_param_groups_with_different_lrs_resume_bit_identically(tmp_path):
    uninterrupted, resumed = interrupted_and_resumed(tmp_path, two_groups=True)
    assert_same_steps(uninterrupted, resumed)
    lrs = resumed[0][1]
    assert lrs[0] != lrs[1]


def test_optimizer_state_round_trips_with_exact_values_and_dtypes(tmp_path):
    model, optimizer, scheduler = setup(seed=0, two_groups=True)
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    save_training_state(tmp_path, optimizer, scheduler, Progress())
    _, fresh_optimizer, fresh_scheduler = setup(seed=0, two_groups=True)
    load_training_state(tmp_path, fresh_optimizer, fresh_scheduler)

    before, after = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for index, values in before["state"].items():
        assert values.keys() == after["state"][index].keys()
        for name, value in values.items():
            loaded = after["state"][index][name]
            assert loaded.dtype == value.dtype and loaded.shape == value.shape  # step is 0-d fp32
            assert torch.equal(loaded, value)
    assert fresh_scheduler.state_dict() == scheduler.state_dict()


def test_python_numpy_and_torch_random_streams_are_restored(tmp_path):
    _, optimizer, scheduler = setup(seed=0)
    random.seed(3)
    np.random.seed(4)
    random.gauss(0, 1)  # leaves a cached second normal in both generators' states
    np.random.standard_normal()
    save_training_state(tmp_path, optimizer, scheduler, Progress())

    def draws():
        return (
            [random.random(), random.gauss(0, 1)],
            np.random.standard_normal(3).tolist() + np.random.rand(3).tolist(),
            torch.rand(3),
        )

    expected = draws()
    draws()
    load_training_state(tmp_path, optimizer, scheduler)
    got = draws()
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def process_streams(seed):
    """What `capture_rng` returns in a process whose generators were seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return capture_rng()


def test_each_process_resumes_its_own_random_streams(tmp_path):
    _, optimizer, scheduler = setup(seed=0)
    states = [process_streams(seed) for seed in (10, 11, 12)]
    save_training_state(tmp_path, optimizer, scheduler, Progress(), rng_states=states)
    for index, seed in enumerate((10, 11, 12)):
        process_streams(seed)
        expected = (random.random(), np.random.rand(), torch.rand(3))
        process_streams(99)
        load_training_state(tmp_path, optimizer, scheduler, process_index=index, num_processes=3)
        got = (random.random(), np.random.rand(), torch.rand(3))
        assert got[:2] == expected[:2] and torch.equal(got[2], expected[2]), index


def test_a_different_process_count_warns_and_falls_back_to_process_0(tmp_path):
    _, optimizer, scheduler = setup(seed=0)
    states = [process_streams(seed) for seed in (10, 11)]
    save_training_state(tmp_path, optimizer, scheduler, Progress(), rng_states=states)
    process_streams(10)
    expected = torch.rand(3)
    with pytest.warns(UserWarning, match="random states for 2 process"):
        load_training_state(tmp_path, optimizer, scheduler, process_index=2, num_processes=3)
    assert torch.equal(torch.rand(3), expected)


def test_progress_round_trips(tmp_path):
    _, optimizer, scheduler = setup(seed=0)
    progress = Progress(
        global_step=120,
        epoch=2,
        step_in_epoch=17,
        best_metric=0.8125,
        best_checkpoint="out/run/checkpoint-100",
        extra={"tokens_seen": 123456, "eval_history": [0.5, 0.8125], "note": None},
    )
    save_training_state(tmp_path, optimizer, scheduler, progress)
    assert load_training_state(tmp_path, optimizer, scheduler) == progress


def test_default_progress_round_trips(tmp_path):
    _, optimizer, scheduler = setup(seed=0)
    save_training_state(tmp_path, optimizer, scheduler, Progress())
    assert load_training_state(tmp_path, optimizer, scheduler) == Progress()


def test_every_file_written_is_safetensors_or_json_never_pickle(tmp_path):
    model, optimizer, scheduler = setup(seed=0)
    train_step(model, optimizer, scheduler)
    save_training_state(tmp_path, optimizer, scheduler, Progress(global_step=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temporary files left
    for path in tmp_path.iterdir():
        assert not path.read_bytes().startswith(b"\x80")  # pickle protocol 2+ opcode
        if path.suffix == ".safetensors":
            assert load_file(path)
        else:
            assert json.loads(path.read_text())["progress"]["global_step"] == 1
    assert "state.0.exp_avg" in load_file(tmp_path / OPTIMIZER_NAME)


def test_state_that_is_not_json_fails_before_any_file_is_written(tmp_path):
    _, optimizer, scheduler = setup(seed=0)
    with pytest.raises(TypeError):
        save_training_state(tmp_path, optimizer, scheduler, Progress(extra={"when": object()}))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", FILES)
def test_missing_file_names_it_and_says_what_to_do(tmp_path, name):
    _, optimizer, scheduler = setup(seed=0)
    save_training_state(tmp_path, optimizer, scheduler, Progress())
    (tmp_path / name).unlink()
    with pytest.raises(ReftError, match=rf"{name} is missing.*earlier checkpoint") as info:
        load_training_state(tmp_path, optimizer, scheduler)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", FILES)
def test_corrupt_file_names_it_and_changes_nothing(tmp_path, name):
    model, optimizer, scheduler = setup(seed=0)
    train_step(model, optimizer, scheduler)
    save_training_state(tmp_path, optimizer, scheduler, Progress())
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _, fresh_optimizer, fresh_scheduler = setup(seed=0)
    rng = torch.get_rng_state()
    with pytest.raises(ReftError, match=rf"{name} is corrupt.*earlier checkpoint") as info:
        load_training_state(tmp_path, fresh_optimizer, fresh_scheduler)
    assert "\n" not in str(info.value)
    assert fresh_optimizer.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng)


def test_json_pointing_at_a_missing_tensor_is_reported_as_corrupt(tmp_path):
    model, optimizer, scheduler = setup(seed=0)
    train_step(model, optimizer, scheduler)
    save_training_state(tmp_path, optimizer, scheduler, Progress())
    tensors = load_file(tmp_path / OPTIMIZER_NAME)
    del tensors["state.0.exp_avg"]
    save_file(tensors, tmp_path / OPTIMIZER_NAME)
    with pytest.raises(ReftError, match=rf"{TRAINING_STATE_NAME} is corrupt.*state\.0\.exp_avg"):
        load_training_state(tmp_path, optimizer, scheduler)


def test_optimizer_state_of_other_parameters_is_refused(tmp_path):
    _, optimizer, scheduler = setup(seed=0, two_groups=True)
    save_training_state(tmp_path, optimizer, scheduler, Progress())
    _, other_optimizer, other_scheduler = setup(seed=0)  # one group, not two
    with pytest.raises(ReftError, match="does not fit this run"):
        load_training_state(tmp_path, other_optimizer, other_scheduler)
