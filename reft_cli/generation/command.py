"""`reft generate` as one call: resolve settings (config section, then options), load, answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from reft_cli.config.reader import load_config
from reft_cli.config.schema import GenerateConfig
from reft_cli.engine.loading import Placement, load_adapters
from reft_cli.errors import ReftError
from reft_cli.generation.answers import Answerer
from reft_cli.generation.frontends import answer_file, answer_prompts, chat, parse_adapter_specs


@dataclass
class GenerateRequest:
    """Everything `reft generate` was asked, before any model is loaded."""

    adapters: list[str] = field(default_factory=list)
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    input: Path | None = None
    output: Path | None = None
    chat: bool = False
    raw: bool = False
    compare: bool = False
    skip_bad_lines: bool = False
    base_model: str | None = None
    placement: Placement = field(default_factory=Placement)
    settings: dict[str, Any] = field(default_factory=dict)  # option values; None = not given


def run_generate(request: GenerateRequest, console: Console) -> None:
    """Answer the prompts, file or chat the request names with its adapters."""
    modes = sum([bool(request.prompts), request.input is not None, request.chat])
    if modes != 1:
        raise ReftError("choose one of --prompt, --input (with --output), or --chat")
    if request.input is not None and request.output is None:
        raise ReftError("--input needs --output FILE.jsonl")
    settings, specs = GenerateConfig(), list(request.adapters)
    if request.config is not None:
        run = load_config(request.config, request.overrides)
        settings = run.generate
        specs = specs or [run.train.output_dir]
    elif request.overrides:
        raise ReftError("key=value overrides need a CONFIG to apply to")
    settings = settings.updated(request.settings)
    loaded = load_adapters(
        parse_adapter_specs(specs), base_model=request.base_model, placement=request.placement
    )
    answerer = Answerer(loaded, raw=request.raw)
    if request.chat:
        chat(answerer, settings, console)
    elif request.input is not None:
        assert request.output is not None
        count = answer_file(
            answerer,
            request.input,
            request.output,
            settings,
            request.compare,
            request.skip_bad_lines,
            console,
        )
        if str(request.output) != "-":
            console.print(f"wrote {count} rows to {request.output}")
    else:
        answer_prompts(answerer, request.prompts, settings, request.compare, console)
