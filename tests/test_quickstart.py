"""The offline quick start end to end: configs/emoji.yaml trains an adapter that answers in emoji."""

import re
from pathlib import Path

import torch

from reft_cli import ReftModel
from reft_cli.engine.base_models import load_tokenizer
from tests.cli.test_cli import reft
from tests.conftest import needs_smollm2

CONFIG = Path(__file__).parents[1] / "configs" / "emoji.yaml"
UNSEEN = [
    "What is the capital of France?",
    "How do computers work?",
    "Write a poem about the sea.",
    "What's your name?",
    "Give me advice on studying.",
    "Explain gravity to a child.",
]


def is_emoji_answer(text: str) -> bool:
    """At least one emoji and no ASCII word."""
    has_emoji = any(ord(c) >= 0x1F000 or 0x2600 <= ord(c) <= 0x27BF for c in text)
    return has_emoji and re.search(r"[A-Za-z]{2,}", text) is None


def test_emoji_detector():
    assert is_emoji_answer("🌍☀️➡️🔵")
    assert not is_emoji_answer("🌍 The sky")
    assert not is_emoji_answer("Paris")


@needs_smollm2
def test_quick_start_answers_unseen_questions_in_emoji(tmp_path):
    out = tmp_path / "emoji"
    # Shortened to fit the suite: 40 epochs at the paper's lr 4e-3 without dropout reach what
    # the shipped 100 epochs at 2e-3 with dropout reach; the full run is in the README.
    result = reft(
        "train",
        str(CONFIG),
        "train.num_train_epochs=40",
        "train.learning_rate=4e-3",
        "intervention.dropout=0",
        f"train.output_dir={out}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wall time" in result.stdout
    model = ReftModel.from_pretrained(out).eval()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tokenizer.padding_side = "left"
    template = model.reft_config.prompt_template
    batch = tokenizer(
        [template.format(prompt=q) for q in UNSEEN], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        generated = model.generate(
            batch.input_ids,
            batch.attention_mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = tokenizer.batch_decode(
        generated[:, batch.input_ids.shape[1] :], skip_special_tokens=True
    )
    emoji = [a for a in answers if is_emoji_answer(a.strip())]
    assert len(emoji) >= 4, answers
