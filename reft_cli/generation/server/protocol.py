"""Request bodies of the OpenAI completions and chat APIs, checked and turned into token rows.

Every refusal is a 400 naming the field, so a client sees what to change; fields this engine
cannot honour (echo, penalties, tools, ...) are refused rather than ignored, and fields that
change nothing (`user`, ...) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from reft_cli.generation.server.engine import Sampling
from reft_cli.generation.server.errors import ApiError, bad_request
from reft_cli.generation.server.logprobs import MAX_LOGPROBS

MAX_N = 16
MAX_STOP = 4
MAX_PROMPTS = 64
ROLES = ("system", "developer", "user", "assistant")

# field: the values that mean "not used"; anything else is refused as unsupported.
UNSUPPORTED_COMPLETIONS = {
    "echo": (False, None),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
}
UNSUPPORTED_CHAT = {
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "prediction": (None,),
}


class Context(Protocol):
    """What parsing needs from the server: its model names, tokenizer and bounds."""

    tokenizer: PreTrainedTokenizerBase
    max_model_len: int
    max_new_tokens: int

    def resolve(self, model: str) -> str: ...

    def system_prompt(self, adapter: str) -> str | None: ...


@dataclass(frozen=True)
class Job:
    """A checked request: its adapter, token rows and decode settings."""

    model: str
    adapter: str
    prompts: list[list[int]]
    max_tokens: list[int]
    sampling: Sampling
    n: int
    stop: list[str]
    stream: bool
    include_usage: bool
    logprobs: int = -1  # top log-probabilities per token (-1: none)


def parse_completion(body: dict[str, Any], ctx: Context) -> Job:
    """`POST /v1/completions`: the prompt as is (text, texts, or token ids)."""
    _refuse_unsupported(body, UNSUPPORTED_COMPLETIONS)
    best_of = body.get("best_of")
    if best_of not in (None, 1, body.get("n", 1)):
        raise bad_request("best_of other than n is not supported", "best_of", "unsupported")
    model, adapter = _model(body, ctx)
    prompts = [_encode_prompt(p, ctx) for p in _prompt_list(body.get("prompt"))]
    job = _job(body, ctx, model, adapter, prompts, default_max=16, param="prompt")
    logprobs = body.get("logprobs")
    if logprobs is None:
        return job
    return replace(job, logprobs=_int(body, "logprobs", 0, 0, MAX_LOGPROBS))


def _chat_logprobs(body: dict[str, Any]) -> int:
    """`logprobs: true` asks for the chosen tokens', `top_logprobs: k` for the k likeliest too."""
    wanted = body.get("logprobs")
    if wanted not in (None, True, False):
        raise bad_request("logprobs must be true or false", "logprobs")
    top = _int(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
    if top and not wanted:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    return top if wanted else -1


def parse_chat(body: dict[str, Any], ctx: Context) -> Job:
    """`POST /v1/chat/completions`: messages through the tokenizer's chat template, with the
    adapter's system prompt when the messages bring none (as `reft generate --chat` does)."""
    _refuse_unsupported(body, UNSUPPORTED_CHAT)
    model, adapter = _model(body, ctx)
    messages = _messages(body.get("messages"))
    tokenizer = ctx.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise bad_request(
            "this model's tokenizer has no chat template; use /v1/completions", "messages"
        )
    system = ctx.system_prompt(adapter)
    if system and not any(m["role"] in ("system", "developer") for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as err:  # jinja errors: a template that rejects these roles, say
        raise bad_request(f"the chat template failed on these messages: {err}", "messages") from err
    ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    if "max_completion_tokens" in body and body.get("max_tokens") is None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    job = _job(body, ctx, model, adapter, [ids], default_max=None, param="messages")
    return replace(job, logprobs=_chat_logprobs(body))


def _job(
    body: dict[str, Any],
    ctx: Context,
    model: str,
    adapter: str,
    prompts: list[list[int]],
    default_max: int | None,
    param: str,
) -> Job:
    n = _int(body, "n", 1, 1, MAX_N)
    max_tokens = body.get("max_tokens")
    limits = []
    for ids in prompts:
        if not ids:
            raise bad_request("the prompt is empty", param)
        room = ctx.max_model_len - len(ids)
        wanted = (
            _int(body, "max_tokens", 1, 1, ctx.max_new_tokens)
            if max_tokens is not None
            else default_max or min(ctx.max_new_tokens, max(room, 1))
        )
        if len(ids) + wanted > ctx.max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {ctx.max_model_len} tokens. However, "
                f"you requested {len(ids) + wanted} tokens ({len(ids)} in the {param}, {wanted} "
                f"in the completion). Please reduce the length of the {param} or completion.",
                "context_length_exceeded",
                param,
            )
        limits.append(wanted)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request("top_p must be above 0", "top_p")
    top_k = _int(body, "top_k", -1, -1, 1 << 20)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise bad_request("seed must be a non-negative integer", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    repetition = _number(body, "repetition_penalty", 1.0, 0.0, 10.0)
    if repetition == 0:
        raise bad_request("repetition_penalty must be above 0 (1: none)", "repetition_penalty")
    sampling = Sampling(
        temperature,
        top_p,
        max(top_k, 0),
        seed if temperature else None,
        repetition,
        _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
    )
    return Job(
        model,
        adapter,
        prompts,
        limits,
        sampling,
        n,
        _stop(body.get("stop")),
        stream,
        bool(options.get("include_usage")) and stream,
    )


def _model(body: dict[str, Any], ctx: Context) -> tuple[str, str]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: the base model's name or an adapter's", "model")
    return model, ctx.resolve(model)


def _refuse_unsupported(body: dict[str, Any], fields: dict[str, tuple]) -> None:
    for name, unused in fields.items():
        if name in body and body[name] not in unused:
            raise bad_request(
                f"{name} is not supported by this server", name, code="unsupported_parameter"
            )


def _prompt_list(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return [prompt]
    if (
        isinstance(prompt, list)
        and 0 < len(prompt) <= MAX_PROMPTS
        and all(
            isinstance(p, str) or (isinstance(p, list) and all(map(_is_int, p))) for p in prompt
        )
    ):
        return prompt
    raise bad_request(
        f"prompt must be a string, a list of up to {MAX_PROMPTS} strings, or token ids", "prompt"
    )


def _encode_prompt(prompt: str | list[int], ctx: Context) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("the prompt is empty", "prompt")
        return ctx.tokenizer(prompt)["input_ids"]
    vocab = len(ctx.tokenizer)
    if any(not 0 <= t < vocab for t in prompt):
        raise bad_request(f"token ids must be in [0, {vocab})", "prompt")
    return list(prompt)


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad_request(
                f"each message needs a role among {', '.join(ROLES)} and a content", "messages"
            )
        out.append({"role": message["role"], "content": _content(message.get("content"))})
    return out


def _content(content: Any) -> str:
    """A string, or text parts joined (images and audio are not supported)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise bad_request("message content must be text (a string or text parts)", "messages")


def _stop(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise bad_request(f"stop must be a string or a list of up to {MAX_STOP} strings", "stop")
    return stops


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}", name)
    return value


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(f"{name} must be a number from {low:g} to {high:g}", name)
    return float(value)
