"""`reft serve` as one call: load the adapters once, then serve them over HTTP until a signal."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from reft_cli.engine.loading import LoadedModel, Placement, load_adapters
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from reft_cli.generation.frontends import parse_adapter_specs

LOOPBACK = ("127.0.0.1", "localhost", "::1")
FALLBACK_CONTEXT = 2048


@dataclass
class ServeOptions:
    """Everything `reft serve` was asked, before any model is loaded."""

    adapters: list[str] = field(default_factory=list)
    base_model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    placement: Placement = field(default_factory=Placement)
    api_key: str | None = None
    allow_adapter_loading: bool = False
    adapter_root: Path | None = None
    max_batch_size: int = 8
    max_queue: int = 256
    max_prefill_tokens: int = 8192
    max_model_len: int | None = None
    max_new_tokens: int = 1024
    max_body_bytes: int = 1 << 20


def serve(options: ServeOptions) -> None:
    """Load, then run uvicorn; SIGINT/SIGTERM stop it cleanly (in-flight work ends, then exit)."""
    import uvicorn

    from reft_cli.generation.server.adapters import Models
    from reft_cli.generation.server.app import create_app
    from reft_cli.generation.server.engine import Engine

    _check(options)
    specs = parse_adapter_specs(options.adapters)
    loaded = load_adapters(specs, base_model=options.base_model, placement=options.placement)
    if not isinstance(loaded.model, ReftModel) or loaded.task_type != "causal_lm":
        raise ReftError(
            "reft serve serves ReFT causal_lm adapters; LoRA and classifiers are not served"
        )
    base_name = options.base_model or str(next(iter(loaded.records.values())).base_model)
    context = options.max_model_len or context_length(loaded)
    engine = Engine(loaded, options.max_batch_size, options.max_queue, options.max_prefill_tokens)
    models = Models(
        engine,
        base_name,
        {name: path.resolve() for name, path in specs.items()},
        options.adapter_root if options.allow_adapter_loading else None,
        context,
        min(options.max_new_tokens, context - 1),
    )
    app = create_app(models, options.api_key, options.allow_adapter_loading, options.max_body_bytes)
    _log_setup()
    log = logging.getLogger("reft.serve")
    if options.host not in LOOPBACK and options.api_key is None:
        log.warning(
            "warning: serving on %s without --api-key; anyone who can reach it may use it",
            options.host,
        )
    names = ", ".join([base_name, *specs])
    log.info(
        "reft serve: http://%s:%d/v1 on %s, models: %s",
        options.host,
        options.port,
        loaded.device,
        names,
    )
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the
    # handler that was there before: make that a quiet exit rather than a traceback or a kill.
    signal.signal(signal.SIGTERM, _exit_quietly)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def context_length(loaded: LoadedModel) -> int:
    """The model's context: its position embeddings, else a sane tokenizer limit, else 2048."""
    config = loaded.base_model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(loaded.tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else FALLBACK_CONTEXT


def _check(options: ServeOptions) -> None:
    if options.allow_adapter_loading and options.adapter_root is None:
        raise ReftError(
            "--allow-adapter-loading needs --adapter-root DIR: the only folders it may load"
        )
    if options.adapter_root is not None and not options.adapter_root.is_dir():
        raise ReftError(f"--adapter-root {options.adapter_root} is not a folder")
    for name, value in (
        ("--max-batch-size", options.max_batch_size),
        ("--max-queue", options.max_queue),
        ("--max-prefill-tokens", options.max_prefill_tokens),
        ("--max-new-tokens", options.max_new_tokens),
    ):
        if value < 1:
            raise ReftError(f"{name} must be at least 1")
    if options.max_model_len is not None and options.max_model_len < 2:
        raise ReftError("--max-model-len must be at least 2")


def _log_setup() -> None:
    """One line per event on stderr, without uvicorn's access log."""
    log = logging.getLogger("reft.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
