"""Log-probabilities as the OpenAI API shows them: per completion token, its own and the top k.

The engine reports, per token, the log-softmax of the model's raw next-token logits (before
temperature or top-p, as vLLM does by default): the chosen token's and the k likeliest. Token ids
become text here, on the event loop; each token is decoded on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]


def token_logprob(tokenizer: PreTrainedTokenizerBase, entry: tuple) -> TokenLogprob:
    """From the engine's (id, logprob, top values, top ids)."""
    token, logprob, values, ids = entry
    top = [(_text(tokenizer, i), v) for i, v in zip(ids, values, strict=True)]
    return TokenLogprob(_text(tokenizer, token), logprob, top)


def completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The completions API's `logprobs` object; `offset` is where these tokens' text begins."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The chat API's `logprobs` object."""
    return {
        "content": [
            {
                **_chat_token(e.token, e.logprob),
                "top_logprobs": [_chat_token(t, v) for t, v in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def _chat_token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _text(tokenizer: PreTrainedTokenizerBase, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)
