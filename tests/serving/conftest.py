"""A live `reft serve` on loopback: a tiny random base model, two adapters with strong random
weights, and the in-process answers the server must reproduce."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer

from reft_cli import ReftConfig, get_reft_model
from reft_cli.engine.base_models import load_model
from tests.conftest import tiny_model_dir

pytest.importorskip("fastapi")
pytest.importorskip("openai")

ROOT = Path(__file__).parents[2]
KEY = "test-key"
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
ADAPTERS = {"emoji": ("{prompt}", None, 7), "math": ("chat", "You add numbers.", 11)}


def make_adapter(base: Path, out: Path, template: str, system: str | None, seed: int) -> Path:
    """A small adapter whose strong random edit changes the base model's answers."""
    config = ReftConfig.for_layers(
        [0, 2],
        3,
        rank=2,
        positions="f1+l1",
        base_model=str(base),
        prompt_template=template,
        system_prompt=system,
    )
    model = get_reft_model(load_model(str(base)), config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.normal_(std=1.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """The base model folder (with a chat template), the adapters, and an adapter root holding a
    third adapter and one for another base model."""
    root = tmp_path_factory.mktemp("serve")
    base = tiny_model_dir(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(base)
    found = {"base": base}
    for name, (template, system, seed) in ADAPTERS.items():
        found[name] = make_adapter(base, root / name, template, system, seed)
    found["root"] = root / "root"
    found["extra"] = make_adapter(base, root / "root" / "extra", "{prompt}", None, 13)
    other = tiny_model_dir(root / "other", num_layers=4)
    found["foreign"] = root / "root" / "foreign"
    config = ReftConfig.for_layers([0], 4, rank=2, base_model=str(other))
    get_reft_model(load_model(str(other)), config).save_pretrained(found["foreign"])
    found["outside"] = make_adapter(base, root / "outside", "{prompt}", None, 17)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `python -m reft_cli serve` subprocess; killed by the fixture that made it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reft_cli", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def server_args(models: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--adapter",
        f"emoji={models['emoji']}",
        "--adapter",
        f"math={models['math']}",
        "--device",
        "cpu",
        "--max-model-len",
        "256",
        "--max-new-tokens",
        "64",
        *extra,
    ]


@pytest.fixture(scope="session")
def server(models, tmp_path_factory):
    """The server the API tests share: key required, runtime loading under the adapter root."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    args = server_args(
        models,
        "--api-key",
        KEY,
        "--allow-adapter-loading",
        "--adapter-root",
        str(models["root"]),
        "--max-batch-size",
        "8",
        "--max-queue",
        "64",
    )
    live = Server(args, log)
    try:
        yield live.wait()
    finally:
        live.stop()


PROMPTS = ["Hello", "Who are you?", "2 + 3 =", "Tell me a story about a cat", "x", "ReFT"]
MAX_TOKENS = 6


@pytest.fixture(scope="session")
def expected(models) -> dict[tuple[str, str, str], str]:
    """Greedy answers as `reft generate` gives them, row by row, in this process:
    (route, model, prompt) -> text. Completions send the text as is (`--raw`); chat goes through
    the adapter's chat template and system prompt."""
    from reft_cli.config.schema import GenerateConfig
    from reft_cli.engine.loading import Placement, load_adapters
    from reft_cli.generation.answers import Answerer

    loaded = load_adapters(
        {"emoji": models["emoji"], "math": models["math"]}, placement=Placement(device="cpu")
    )
    settings = GenerateConfig(max_new_tokens=MAX_TOKENS)
    raw, templated = Answerer(loaded, raw=True), Answerer(loaded)
    found = {}
    for prompt in PROMPTS:
        for name in ("emoji", "math", "base"):
            found["completions", name, prompt] = raw.answer([name], [{"prompt": prompt}], settings)[
                0
            ][0]
        found["chat", "math", prompt] = templated.answer(["math"], [{"prompt": prompt}], settings)[
            0
        ][0]
    return found
