"""The trainer keeps the user's files and its own checkpoints safe: foreign folders, locks,
interrupts mid-step, weights gone non-finite, SIGTERM."""

import json

import pytest

from reft_cli.errors import ReftError
from tests.conftest import tiny_model_dir
from tests.training.test_trainer import ROWS, config, fit


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


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
