"""The OpenAI API of a live `reft serve`, through the official client and raw HTTP."""

from __future__ import annotations

import os
import signal

import httpx
import openai
import pytest

from tests.serving.conftest import KEY, MAX_TOKENS, PROMPTS, Server, server_args

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def post(server, route, body, headers=AUTH, **kwargs):
    return httpx.post(server.url + route, json=body, headers=headers, timeout=30, **kwargs)


def test_models_lists_the_base_and_each_adapter_with_its_parent_and_folder(client, models):
    cards = {m.id: m for m in client.models.list().data}
    base = str(models["base"])
    assert set(cards) >= {base, "emoji", "math"}
    assert cards["emoji"].parent == base and cards["emoji"].root == str(models["emoji"])
    assert cards[base].parent is None


@pytest.mark.parametrize("model", ["emoji", "math", "base"])
def test_greedy_completions_equal_reft_generate(client, expected, model):
    for prompt in PROMPTS[:3]:
        out = client.completions.create(
            model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0
        )
        assert out.choices[0].text == expected["completions", model, prompt]
        assert out.usage.completion_tokens <= MAX_TOKENS and out.usage.prompt_tokens > 0


def test_the_base_model_answers_under_its_own_name_and_adapters_change_answers(
    client, expected, models
):
    out = client.completions.create(
        model=str(models["base"]), prompt="Hello", max_tokens=MAX_TOKENS, temperature=0
    )
    assert out.choices[0].text == expected["completions", "base", "Hello"]
    assert expected["completions", "emoji", "Hello"] != expected["completions", "base", "Hello"]


def test_chat_uses_the_adapters_template_and_system_prompt(client, expected):
    for prompt in PROMPTS[:3]:
        out = client.chat.completions.create(
            model="math",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        assert out.choices[0].message.content == expected["chat", "math", prompt]
        assert out.choices[0].message.role == "assistant"


def test_streams_give_the_same_text_and_usage_at_the_end(client, expected):
    stream = client.completions.create(
        model="emoji",
        prompt="Who are you?",
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected["completions", "emoji", "Who are you?"]
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    chat = client.chat.completions.create(
        model="math",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    parts = [c.choices[0] for c in chat]
    assert "".join(p.delta.content or "" for p in parts) == expected["chat", "math", "Hello"]
    assert parts[-1].finish_reason == "length"


def test_raw_sse_ends_with_done(server):
    body = {"model": "emoji", "prompt": "x", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


def test_stop_strings_cut_the_text_before_them(client, expected):
    full = expected["completions", "emoji", "Hello"]
    stop = full[2:4]
    out = client.completions.create(
        model="emoji", prompt="Hello", max_tokens=MAX_TOKENS, temperature=0, stop=[stop]
    )
    assert out.choices[0].text == full[: full.find(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_n_and_seed_sample_repeatably(client):
    def sample():
        out = client.completions.create(
            model="emoji", prompt="Hello", max_tokens=5, temperature=1.0, n=3, seed=5
        )
        return [c.text for c in out.choices]

    first = sample()
    assert len(first) == 3 and sample() == first


def test_a_list_of_prompts_gives_a_choice_each(server, expected):
    r = post(
        server,
        "/v1/completions",
        {"model": "math", "prompt": PROMPTS[:2], "max_tokens": MAX_TOKENS, "temperature": 0},
    )
    texts = [c["text"] for c in r.json()["choices"]]
    assert texts == [expected["completions", "math", p] for p in PROMPTS[:2]]


def test_logprobs_in_completions_and_chat_streamed_or_not(client, expected):
    out = client.completions.create(
        model="emoji", prompt="Hello", max_tokens=MAX_TOKENS, temperature=0, logprobs=2
    )
    scores = out.choices[0].logprobs
    assert out.choices[0].text == expected["completions", "emoji", "Hello"]
    # One entry per completion token (a byte tokenizer's tokens may be half characters).
    assert len(scores.tokens) == out.usage.completion_tokens
    assert len(scores.token_logprobs) == len(scores.tokens) == len(scores.top_logprobs)
    for token, logprob, top in zip(
        scores.tokens, scores.token_logprobs, scores.top_logprobs, strict=True
    ):
        assert len(top) <= 2 and max(top.values()) == logprob <= 0 and top[token] == logprob
    assert scores.text_offset[0] == 0
    stream = client.completions.create(
        model="emoji", prompt="Hello", max_tokens=MAX_TOKENS, temperature=0, logprobs=2, stream=True
    )
    streamed = [
        v for c in stream if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == scores.token_logprobs
    chat = client.chat.completions.create(
        model="math",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob for t in content)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(
            model="math", messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )


def test_auth_is_required_except_for_health(server):
    assert httpx.get(server.url + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(server.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "does not exist"),
        ({"model": "emoji", "prompt": "x" * 300}, 400, "maximum context length is 256"),
        ({"model": "emoji", "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
        ({"model": "emoji", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": "emoji", "prompt": "x", "echo": True}, 400, "echo is not supported"),
        ({"model": "emoji", "prompt": "x", "presence_penalty": 3}, 400, "presence_penalty must"),
        ({"model": "emoji", "prompt": "x", "frequency_penalty": "1"}, 400, "frequency_penalty"),
        ({"model": "emoji", "prompt": "x", "repetition_penalty": 0}, 400, "above 0"),
        ({"model": "emoji", "prompt": "x", "logprobs": 21}, 400, "logprobs must be"),
        ({"model": "emoji", "prompt": ""}, 400, "empty"),
        ({"prompt": "x"}, 400, "model is required"),
    ],
)
def test_bad_requests_are_openai_errors(server, body, status, words):
    r = post(server, "/v1/completions", body)
    assert r.status_code == status
    error = r.json()["error"]
    assert words in error["message"] and {"type", "code", "param"} <= set(error)


def test_the_context_error_names_the_lengths(client):
    with pytest.raises(openai.BadRequestError, match=r"301 in the prompt, 16 in the completion"):
        client.completions.create(model="emoji", prompt="x" * 300)


def test_malformed_and_oversized_bodies_are_refused(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"model": "emoji", "prompt": "x" * (2 << 20)})
    assert r.status_code == 413
    r = post(server, "/v1/chat/completions", {"model": "math", "messages": [{"role": "x"}]})
    assert r.status_code == 400
    assert httpx.get(server.url + "/v1/nothing", headers=AUTH).json()["error"]["message"]


def test_adapters_load_and_unload_under_the_root_only(server, models, tmp_path):
    r = post(server, "/v1/load_adapter", {"lora_name": "extra", "lora_path": "extra"})
    assert r.status_code == 200, r.text
    names = [m["id"] for m in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]]
    assert "extra" in names
    r = post(server, "/v1/completions", {"model": "extra", "prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 200
    outside = str(models["outside"])
    assert post(server, "/v1/load_adapter", {"name": "o", "path": outside}).status_code == 403
    link = models["root"] / "link"
    if not link.exists():
        link.symlink_to(models["outside"])
    assert post(server, "/v1/load_adapter", {"name": "o", "path": "link"}).status_code == 403
    r = post(server, "/v1/load_adapter", {"name": "f", "path": "foreign"})
    assert r.status_code == 400 and "serves" in r.json()["error"]["message"]
    assert post(server, "/v1/unload_adapter", {"lora_name": "extra"}).status_code == 200
    r = post(server, "/v1/completions", {"model": "extra", "prompt": "Hello"})
    assert r.status_code == 404
    assert post(server, "/v1/unload_adapter", {"lora_name": "extra"}).status_code == 404


def test_sigterm_exits_cleanly_and_loading_is_off_by_default(models, tmp_path):
    live = Server(server_args(models), tmp_path / "log", env={"REFT_API_KEY": ""}).wait()
    try:
        r = httpx.post(live.url + "/v1/load_adapter", json={"name": "e", "path": "extra"})
        assert r.status_code == 403
        assert (
            httpx.post(
                live.url + "/v1/completions",
                json={"model": "emoji", "prompt": "a", "max_tokens": 2},
            ).status_code
            == 200
        )
        os.kill(live.process.pid, signal.SIGTERM)
        assert live.process.wait(20) == 0
        output = live.output()
        assert "Traceback" not in output and "arning" not in output
        assert '"adapter": "emoji"' in output and '"queue_s"' in output
    finally:
        live.stop()


def test_serve_without_the_extra_says_how_to_install(monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from reft_cli.cli.app import app

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "fastapi" else real(n, *a)
    )
    result = CliRunner().invoke(app, ["serve", "--adapter", "x"])
    assert "pip install 'reft[serve]'" in str(result.exception)
