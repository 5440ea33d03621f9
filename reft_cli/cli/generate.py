"""`reft generate [CONFIG] --adapter DIR ...`: answers from one or several adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import config_path, console


def generate(
    config: Path | None = typer.Argument(
        None, help="YAML config: its generate section, and train.output_dir as the adapter."
    ),
    overrides: list[str] = typer.Argument(None, help="key=value overrides with dotted paths."),
    adapter: list[str] = typer.Option(
        None, "--adapter", help="Adapter folder, or NAME=DIR (repeatable)."
    ),
    prompt: list[str] = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    input: Path | None = typer.Option(
        None, "--input", help="JSONL rows with a prompt (and adapter) field."
    ),
    output: Path | None = typer.Option(None, "--output", help="JSONL to write (with --input)."),
    chat: bool = typer.Option(False, "--chat", help="Interactive multi-turn chat, streamed."),
    raw: bool = typer.Option(
        False, "--raw", help="Send the text as is, without the adapter's template."
    ),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Override the adapter's base model."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (the accelerator when present), cpu, cuda, cuda:N or mps."
    ),
    device_map: str | None = typer.Option(
        None, "--device-map", help="auto: spread a large model over the GPUs (accelerate)."
    ),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float32, bfloat16 or float16 (default: the adapter's)."
    ),
    compare: bool = typer.Option(False, "--compare", help="Show the base model's answer beside."),
    skip_bad_lines: bool = typer.Option(
        False, "--skip-bad-lines", help="Warn about bad input lines and go on."
    ),
    max_new_tokens: int | None = typer.Option(None, help="Default 256 (or the config's)."),
    temperature: float | None = typer.Option(None, help="Default 1.0; used with --do-sample."),
    top_p: float | None = typer.Option(None, help="Default 1.0; used with --do-sample."),
    top_k: int | None = typer.Option(None, help="Default 50; used with --do-sample."),
    num_beams: int | None = typer.Option(None, help="Default 1 (greedy)."),
    num_return_sequences: int | None = typer.Option(None, help="Answers per prompt; default 1."),
    do_sample: bool | None = typer.Option(None, "--do-sample/--greedy", help="Sample or not."),
    repetition_penalty: float | None = typer.Option(None, help="Default 1.0 (none)."),
    seed: int | None = typer.Option(None, help="Seed for sampling."),
    batch_size: int | None = typer.Option(None, help="Prompts per batch; default 8."),
) -> None:
    """Generate with one or several adapters (prompt-only edits; decoding runs over the KV cache).

    Decoding settings come from the options, else CONFIG's generate section, else the defaults.

    Examples:
      reft generate --adapter out/emoji --prompt "Who are you?" --compare
      reft generate configs/emoji.yaml --prompt "Who are you?" generate.max_new_tokens=12
      reft generate --adapter a=out/a --adapter b=out/b --input rows.jsonl --output out.jsonl
      reft generate --adapter out/emoji --chat --device cuda
    """
    from reft_cli.engine.loading import Placement
    from reft_cli.generation.command import GenerateRequest, run_generate

    settings = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "num_beams": num_beams,
        "num_return_sequences": num_return_sequences,
        "do_sample": do_sample,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
        "batch_size": batch_size,
    }
    request = GenerateRequest(
        adapters=adapter or [],
        config=config_path(config) if config is not None else None,
        overrides=overrides or [],
        prompts=prompt or [],
        input=input,
        output=output,
        chat=chat,
        raw=raw,
        compare=compare,
        skip_bad_lines=skip_bad_lines,
        base_model=base_model,
        placement=Placement(device=device, device_map=device_map, dtype=dtype),
        settings=settings,
    )
    run_generate(request, console)
