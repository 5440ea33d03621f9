"""Generated token ids back to text, without the half character a token limit can leave.

A limit (`max_new_tokens`) can stop generation inside a multi-byte character; its bytes so far
decode to U+FFFD replacement characters at the end of the text. They are dropped: the character
was never finished, so it is not part of the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

REPLACEMENT = "\ufffd"


def finished_text(text: str) -> str:
    """`text` without a trailing unfinished character."""
    return text.rstrip(REPLACEMENT)


def decode_answers(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Sequence[int]]) -> list[str]:
    """Each row of new token ids as text, special tokens skipped, unfinished characters dropped."""
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return [finished_text(text) for text in texts]
