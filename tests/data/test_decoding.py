"""Answers cut inside a multi-byte character end cleanly."""

from reft_cli.data.decoding import decode_answers, finished_text
from tests.conftest import byte_tokenizer


def test_a_character_cut_by_the_token_limit_is_dropped():
    tokenizer = byte_tokenizer()
    ids = tokenizer("ok 🎉", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[:-1]).endswith("\ufffd")  # the emoji's last byte is missing
    assert decode_answers(tokenizer, [ids[:-1], ids]) == ["ok ", "ok 🎉"]


def test_only_trailing_replacement_characters_go():
    assert finished_text("a\ufffdb\ufffd\ufffd") == "a\ufffdb"
    assert finished_text("done") == "done"
