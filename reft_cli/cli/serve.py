"""`reft serve --adapter NAME=DIR ...`: an OpenAI-compatible server for many adapters on one model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import typer

from reft_cli.errors import ReftError


def serve(
    adapter: list[str] = typer.Option(
        None, "--adapter", help="Adapter folder, or NAME=DIR (repeatable); NAME is its model id."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Override the adapters' base model."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="Port to bind."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, bfloat16 or float16 (default: the adapter's)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", help="Require Authorization: Bearer KEY (default: env REFT_API_KEY)."
    ),
    allow_adapter_loading: bool = typer.Option(
        False, "--allow-adapter-loading", help="Enable /v1/load_adapter and /v1/unload_adapter."
    ),
    adapter_root: Path | None = typer.Option(
        None, "--adapter-root", help="The only folder runtime loading may read adapters from."
    ),
    max_batch_size: int = typer.Option(
        8, "--max-batch-size", help="Rows decoding together (new requests join between steps)."
    ),
    max_queue: int = typer.Option(256, "--max-queue", help="Rows waiting before 503s."),
    max_prefill_tokens: int = typer.Option(
        8192,
        "--max-prefill-tokens",
        help="Padded prompt tokens one prefill may run (bounds the pause of rows decoding).",
    ),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="Prompt + completion tokens (default: the model's context)."
    ),
    max_new_tokens: int = typer.Option(
        1024, "--max-new-tokens", help="The most max_tokens a request may ask for."
    ),
) -> None:
    """Serve adapters over the OpenAI API (completions, chat, streaming), vLLM multi-LoRA style.

    The request's `model` picks the adapter (the base model's name, or `base`, for none); rows for
    different adapters share batches.

    Examples:
      reft serve --adapter emoji=out/emoji --adapter math=out/math
      reft serve --adapter out/emoji --port 8080 --api-key secret
    """
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ReftError(f"reft serve needs {' and '.join(missing)}: pip install 'reft[serve]'")
    from reft_cli.engine.loading import Placement
    from reft_cli.generation.server.run import ServeOptions
    from reft_cli.generation.server.run import serve as run_serve

    options = ServeOptions(
        adapters=adapter or [],
        base_model=base_model,
        host=host,
        port=port,
        placement=Placement(device=device, dtype=dtype),
        api_key=api_key or os.environ.get("REFT_API_KEY") or None,
        allow_adapter_loading=allow_adapter_loading,
        adapter_root=adapter_root,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        max_prefill_tokens=max_prefill_tokens,
        max_model_len=max_model_len,
        max_new_tokens=max_new_tokens,
    )
    run_serve(options)
