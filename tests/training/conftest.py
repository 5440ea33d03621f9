"""Shared fixtures of the trainer tests: a tiny llama folder and a small response dataset."""

import json

import pytest

from tests.conftest import tiny_model_dir
from tests.training.test_trainer import ROWS


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path
