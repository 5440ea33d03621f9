"""What `reft generate` does with prompts, a JSONL file, or a chat: batching, output and display."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from transformers import TextStreamer

from reft_cli.config.schema import GenerateConfig
from reft_cli.data.decoding import decode_answers
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.reft_model import BASE
from reft_cli.errors import ReftError
from reft_cli.generation.answers import Answerer, seed_from

DEFAULT_NAME = "default"
STDIO = "-"  # --input - reads stdin, --output - writes stdout


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    """`DIR` or `NAME=DIR` specs as {name: folder}; `base` is reserved."""
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = DEFAULT_NAME if not named else Path(spec).name, spec
        if name == BASE:
            raise ReftError(
                f"'{BASE}' is reserved for the plain base model; name the adapter otherwise"
            )
        if name in named:
            raise ReftError(f"two adapters are named {name!r}; give each --adapter NAME=DIR")
        named[name] = Path(path)
    if not named:
        raise ReftError("give at least one --adapter DIR (or NAME=DIR)")
    return named


def answer_prompts(
    answerer: Answerer,
    prompts: list[str],
    settings: GenerateConfig,
    compare: bool,
    console: Console,
) -> None:
    """Print each prompt's answer, with the base model's beside it when asked."""
    name = answerer.default_name
    for start in range(0, len(prompts), settings.batch_size):
        chunk = [{"prompt": p} for p in prompts[start : start + settings.batch_size]]
        seed_from(settings)
        answers = answerer.answer([name] * len(chunk), chunk, settings)
        base = answerer.answer([BASE] * len(chunk), chunk, settings) if compare else None
        for i, row in enumerate(chunk):
            console.print(f"[bold]{row['prompt']}[/]", highlight=False)
            table = Table(show_header=True)
            table.add_column(name)
            if base:
                table.add_column("base model")
            for j, text in enumerate(answers[i]):
                table.add_row(text, *([base[i][j]] if base else []))
            console.print(table)


def answer_file(
    answerer: Answerer,
    source: Path,
    target: Path,
    settings: GenerateConfig,
    compare: bool,
    skip_bad_lines: bool,
    console: Console,
) -> int:
    """Generate for every row of a JSONL file; each output row keeps its input fields."""
    if str(source) != STDIO and (not source.exists() or source.is_dir()):
        raise ReftError(
            f"input file {source} not found (give a JSONL file, a pipe, or - for stdin)"
        )
    if str(target) == STDIO:  # stdout carries the rows; progress and warnings go to stderr
        console = Console(stderr=True)
    elif target.exists():
        raise ReftError(f"{target} already exists; choose another --output (or - for stdout)")
    rows, skipped = [], 0
    for number, row in _read_jsonl(source, skip_bad_lines, console):
        if row is None:
            skipped += 1
            continue
        name = row.get("adapter", answerer.default_name)
        try:
            answerer.check_name(name)
        except ReftError as err:
            raise ReftError(f"{source}:{number}: {err}") from None
        try:
            answerer.format(name, row)  # fail early, with the line number, on an unusable prompt
        except ReftError as err:
            message = f"{source}:{number}: {err}"
            if not skip_bad_lines:
                raise ReftError(f"{message}; fix it or pass --skip-bad-lines") from None
            console.print(f"[yellow]warning[/]: {message}; skipped")
            skipped += 1
            continue
        rows.append((name, row))
    order = sorted(
        range(len(rows)), key=lambda i: len(json.dumps(rows[i][1]))
    )  # similar lengths batch together
    results: dict[int, dict[str, Any]] = {}
    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("generate", total=len(rows))
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            names, batch = [rows[i][0] for i in chunk], [rows[i][1] for i in chunk]
            seed_from(settings)
            answers = answerer.answer(names, batch, settings)
            base = answerer.answer([BASE] * len(chunk), batch, settings) if compare else None
            for k, i in enumerate(chunk):
                out = dict(rows[i][1])
                out["generation"] = (
                    answers[k][0] if settings.num_return_sequences == 1 else answers[k]
                )
                if base:
                    out["base_generation"] = (
                        base[k][0] if settings.num_return_sequences == 1 else base[k]
                    )
                results[i] = out
            progress.update(task, advance=len(chunk))
    text = "".join(json.dumps(results[i], ensure_ascii=False) + "\n" for i in range(len(rows)))
    if str(target) == STDIO:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(target, text)
    if skipped:
        console.print(f"[yellow]warning[/]: skipped {skipped} bad lines of {source}")
    return len(rows)


def _read_jsonl(
    path: Path, skip_bad_lines: bool, console: Console
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    lines = sys.stdin.read() if str(path) == STDIO else path.read_text(encoding="utf-8")
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            message = f"{path}:{number}: bad JSON line ({err})"
            if not skip_bad_lines:
                raise ReftError(message + "; fix it or pass --skip-bad-lines") from err
            console.print(f"[yellow]warning[/]: {message}; skipped")
            yield number, None
            continue
        yield number, row


def chat(answerer: Answerer, settings: GenerateConfig, console: Console) -> None:
    """Interactive multi-turn chat through the tokenizer's chat template, streaming tokens."""
    name = answerer.default_name
    loaded = answerer.loaded
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ReftError("--chat needs a tokenizer with a chat template; use --prompt instead")
    system = loaded.records[name].system_prompt
    history: list[dict[str, str]] = []
    console.print("chat with the adapter; /reset starts over, /exit quits")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            message = console.input("[bold]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            break
        if message.strip() == "/exit":
            break
        if message.strip() == "/reset":
            history = []
            console.print("(history cleared)")
            continue
        if not message.strip():
            continue
        history.append({"role": "user", "content": message})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        seed_from(settings)
        out = loaded.generate(
            ids.input_ids,
            ids.attention_mask,
            [name],
            streamer=streamer,
            **settings.kwargs(tokenizer.pad_token_id),
        )
        (reply,) = decode_answers(tokenizer, out[:, ids.input_ids.shape[1] :])
        history.append({"role": "assistant", "content": reply})
