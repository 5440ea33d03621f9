"""A bounded load test: 16 concurrent clients, 208 requests over two adapters and the base model,
streaming and not, some leaving early, some malformed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import openai

from tests.serving.conftest import KEY, MAX_TOKENS, PROMPTS

AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS, REQUESTS = 16, 208
MODELS = ["emoji", "math", "base"]
MALFORMED = [
    ({"content": b"{oops"}, 400),
    ({"json": {"model": "missing", "prompt": "x"}}, 404),
    ({"json": {"model": "emoji", "prompt": "x" * 400}}, 400),
    ({"json": {"model": "emoji", "prompt": "x", "max_tokens": 0}}, 400),
]


def one(i: int, url: str, expected: dict) -> None:
    """Request i of the mix; raises AssertionError when its answer is wrong."""
    model, prompt = MODELS[i % 3], PROMPTS[i % len(PROMPTS)]
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    settings = {"max_tokens": MAX_TOKENS, "temperature": 0}
    kind = i % 8
    if kind in (0, 1):
        r = httpx.post(
            url + "/v1/completions",
            headers=AUTH,
            timeout=60,
            json={"model": model, "prompt": prompt, **settings},
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected["completions", model, prompt]
    elif kind == 2:
        stream = client.completions.create(model=model, prompt=prompt, stream=True, **settings)
        text = "".join(c.choices[0].text for c in stream)
        assert text == expected["completions", model, prompt]
    elif kind == 3:
        out = client.chat.completions.create(
            model="math", messages=[{"role": "user", "content": prompt}], **settings
        )
        assert out.choices[0].message.content == expected["chat", "math", prompt]
    elif kind == 4:
        stream = client.chat.completions.create(
            model="math", messages=[{"role": "user", "content": prompt}], stream=True, **settings
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == expected["chat", "math", prompt]
    elif kind == 5:  # leaves after the first event of a long answer
        body = {"model": model, "prompt": prompt, "max_tokens": 60, "stream": True}
        with httpx.stream(
            "POST", url + "/v1/completions", json=body, headers=AUTH, timeout=60
        ) as r:
            assert r.status_code == 200
            next(r.iter_lines())
    elif kind == 6:
        request, status = MALFORMED[(i // 8) % len(MALFORMED)]
        r = httpx.post(url + "/v1/completions", headers=AUTH, timeout=60, **request)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]
    else:
        out = client.completions.create(model=model, prompt=[prompt, PROMPTS[0]], **settings)
        texts = [c.text for c in out.choices]
        assert texts == [expected["completions", model, p] for p in (prompt, PROMPTS[0])]


def test_mixed_load_is_answered_correctly_and_leaves_the_server_healthy(server, expected):
    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one, i, server.url, expected) for i in range(REQUESTS)]
        done, late = wait(futures, timeout=90)
        for future in late:
            future.cancel()
    assert not late, f"{len(late)} requests did not finish in 90 s"
    errors = [f.exception() for f in done if f.exception() is not None]
    assert not errors, errors[:3]
    assert time.monotonic() - start < 90
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    deadline = time.monotonic() + 10

    def busy() -> int:
        health = httpx.get(server.url + "/health").json()
        return health["waiting"] + health["running"]

    while busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy() == 0  # every row, including those whose clients left, is out of the batch
    one(0, server.url, expected)
    log = server.output()
    assert "Traceback" not in log
    assert '"status": 499' in log  # the clients that left were seen leaving, their rows stopped
