"""`reft generate --adapter DIR ...`: answers from one or several adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import console
from reft_cli.errors import ReftError


def generate(
    adapter: list[str] = typer.Option(
        ..., "--adapter", help="Adapter folder, or NAME=DIR (repeatable)."
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
    compare: bool = typer.Option(False, "--compare", help="Show the base model's answer beside."),
    skip_bad_lines: bool = typer.Option(
        False, "--skip-bad-lines", help="Warn about bad input lines and go on."
    ),
    max_new_tokens: int = typer.Option(256, min=1),
    temperature: float = typer.Option(1.0, min=0.0),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    top_k: int = typer.Option(50, min=0),
    num_beams: int = typer.Option(1, min=1),
    num_return_sequences: int = typer.Option(1, min=1),
    do_sample: bool = typer.Option(False, "--do-sample"),
    repetition_penalty: float = typer.Option(1.0, min=0.0),
    seed: int | None = typer.Option(None),
    batch_size: int = typer.Option(8, min=1),
) -> None:
    """Generate with one or several adapters (prompt-only edits; decoding runs over the KV cache).

    Examples:
      reft generate --adapter out/emoji --prompt "Who are you?" --compare
      reft generate --adapter a=out/a --adapter b=out/b --input rows.jsonl --output out.jsonl
      reft generate --adapter out/emoji --chat
    """
    from reft_cli.generation.session import GenerateOptions, Session, answer_file, answer_prompts
    from reft_cli.generation.session import chat as run_chat

    modes = sum([bool(prompt), input is not None, chat])
    if modes != 1:
        raise ReftError("choose one of --prompt, --input (with --output), or --chat")
    if input is not None and output is None:
        raise ReftError("--input needs --output FILE.jsonl")
    options = GenerateOptions(
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        num_beams,
        num_return_sequences,
        do_sample,
        repetition_penalty,
        seed,
        batch_size,
    )
    session = Session.load(adapter, base_model, raw)
    if chat:
        run_chat(session, options, console)
    elif input is not None:
        count = answer_file(session, input, output, options, compare, skip_bad_lines, console)
        console.print(f"wrote {count} rows to {output}")
    else:
        answer_prompts(session, prompt, options, compare, console)
