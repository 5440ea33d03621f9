"""`reft generate`: answers from one or several adapters, for prompts, JSONL files, or a chat.

Prompts are formatted with each adapter's own template from its reft_config.json, so training and
inference formats cannot drift; `raw` sends the text as is.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from transformers import PreTrainedTokenizerBase, TextStreamer

from reft_cli.config.schema import NAMED_TEMPLATES, DataConfig
from reft_cli.data.templates import make_template
from reft_cli.engine.adapter_io import atomic_write_text
from reft_cli.engine.base_models import load_model, load_tokenizer
from reft_cli.engine.lora_config import LoraAdapterConfig, load_adapter_config
from reft_cli.engine.reft_model import ReftModel
from reft_cli.errors import ReftError
from reft_cli.generation.mixed import BASE, generate

if TYPE_CHECKING:
    from reft_cli.engine.lora import LoraModel

DEFAULT_NAME = "default"


@dataclass
class GenerateOptions:
    """Decoding settings, in transformers' GenerationConfig names."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    num_beams: int = 1
    num_return_sequences: int = 1
    do_sample: bool = False
    repetition_penalty: float = 1.0
    seed: int | None = None
    batch_size: int = 8

    def kwargs(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "num_return_sequences": self.num_return_sequences,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return out


@dataclass
class Session:
    """The base model, tokenizer and named adapters that one `reft generate` call serves."""

    adapters: dict[str, ReftModel | LoraModel]  # a LoRA adapter is served alone
    tokenizer: PreTrainedTokenizerBase
    raw: bool = False
    templates: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lora(self) -> bool:
        """A LoRA session serves one adapter, which changes every position."""
        return not isinstance(next(iter(self.adapters.values())), ReftModel)

    @classmethod
    def load(cls, specs: list[str], base_model: str | None, raw: bool) -> Session:
        """Adapters from `DIR` or `NAME=DIR` specs, all on one base model loaded once."""
        named = _parse_specs(specs)
        configs = {
            name: load_adapter_config(path) if path.is_dir() else _missing(path)
            for name, path in named.items()
        }
        lora = [name for name, c in configs.items() if isinstance(c, LoraAdapterConfig)]
        if lora and len(configs) > 1:
            raise ReftError(
                f"{named[lora[0]]} is a LoRA adapter, which changes the whole model, so it cannot "
                "serve rows beside other adapters; generate with it alone"
            )
        base_names = {c.base_model for c in configs.values()}
        model_name = base_model or next(iter(configs.values())).base_model
        if base_model is None and len(base_names) > 1:
            raise ReftError(
                f"the adapters name different base models ({', '.join(sorted(map(str, base_names)))}); "
                "pass --base-model to choose one"
            )
        first = next(iter(configs.values()))
        tokenizer = load_tokenizer(model_name)
        tokenizer.padding_side = "left"
        base = load_model(model_name, task_type=first.task_type, dtype=first.dtype)
        if lora:
            from reft_cli.engine.lora import LoraModel  # PEFT, imported only for a LoRA folder

            return cls({lora[0]: LoraModel.from_pretrained(named[lora[0]], base)}, tokenizer, raw)
        adapters = {name: ReftModel.from_pretrained(named[name], base).eval() for name in named}
        return cls(adapters, tokenizer, raw)

    def format(self, name: str, row: dict[str, Any]) -> tuple[str, bool]:
        """(prompt text, whether it already holds special tokens) for a row under an adapter.

        Rows for the plain base model take the first adapter's format, so --compare and mixed
        batches compare answers to the same prompt text.
        """
        if "prompt" in row:
            _text(row)  # an empty prompt is an error, whatever the template adds around it
        model = self.adapters.get(name) or next(iter(self.adapters.values()))
        config = model.reft_config
        spec = config.prompt_template
        if self.raw or not spec:
            return _text(row), False
        template = make_template(
            DataConfig(template=spec, system_prompt=config.system_prompt), self.tokenizer
        )
        fields = (
            [n for _, n, _, _ in string.Formatter().parse(spec) if n]
            if spec not in NAMED_TEMPLATES
            else []
        )
        if len(fields) == 1 and fields[0] not in row:
            row = {**row, fields[0]: _text(row)}
        return template.prompt(row), template.has_special_tokens

    def encode(self, names: list[str], rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self.format(n, r) for n, r in zip(names, rows, strict=True)]
        encoded = [
            self.tokenizer(t, add_special_tokens=not special)["input_ids"] for t, special in texts
        ]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id)
        mask = torch.zeros(len(encoded), width, dtype=torch.long)
        for i, row in enumerate(encoded):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def answer(
        self, names: list[str], rows: list[dict[str, Any]], options: GenerateOptions, **extra: Any
    ) -> list[list[str]]:
        """Each row's generations (num_return_sequences per row)."""
        if self.is_lora and len(set(names)) > 1:
            return self._answer_apart(names, rows, options, **extra)
        batch = self.encode(names, rows)
        out = generate(
            self.adapters,
            batch["input_ids"],
            batch["attention_mask"],
            names,
            **options.kwargs(self.tokenizer),
            **extra,
        )
        texts = self.tokenizer.batch_decode(
            out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        k = options.num_return_sequences
        return [texts[i * k : (i + 1) * k] for i in range(len(rows))]

    def _answer_apart(
        self, names: list[str], rows: list[dict[str, Any]], options: GenerateOptions, **extra: Any
    ) -> list[list[str]]:
        """One batch per name: a LoRA adapter changes every position, so its rows and the base
        model's cannot share a forward pass."""
        answers: list[list[str]] = [[] for _ in rows]
        for name in dict.fromkeys(names):
            chosen = [i for i, n in enumerate(names) if n == name]
            texts = self.answer([name] * len(chosen), [rows[i] for i in chosen], options, **extra)
            for i, text in zip(chosen, texts, strict=True):
                answers[i] = text
        return answers


def _text(row: dict[str, Any]) -> str:
    text = row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ReftError("empty prompt: give some text (or a `prompt` field in each input row)")
    return text


def _missing(path: Path) -> NoReturn:
    raise ReftError(f"adapter folder {path} does not exist")


def _parse_specs(specs: list[str]) -> dict[str, Path]:
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
    session: Session, prompts: list[str], options: GenerateOptions, compare: bool, console: Console
) -> None:
    """Print each prompt's answer, with the base model's beside it when asked."""
    name = next(iter(session.adapters))
    for start in range(0, len(prompts), options.batch_size):
        chunk = [{"prompt": p} for p in prompts[start : start + options.batch_size]]
        _seed(options)
        answers = session.answer([name] * len(chunk), chunk, options)
        base = session.answer([BASE] * len(chunk), chunk, options) if compare else None
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
    session: Session,
    source: Path,
    target: Path,
    options: GenerateOptions,
    compare: bool,
    skip_bad_lines: bool,
    console: Console,
) -> int:
    """Generate for every row of a JSONL file; each output row keeps its input fields."""
    if not source.is_file():
        raise ReftError(f"input file {source} not found")
    if target.exists():
        raise ReftError(f"{target} already exists; choose another --output")
    rows, skipped = [], 0
    for number, row in _read_jsonl(source, skip_bad_lines, console):
        if row is None:
            skipped += 1
            continue
        name = row.get("adapter", next(iter(session.adapters)))
        if name != BASE and name not in session.adapters:
            raise ReftError(
                f"{source}:{number}: unknown adapter {name!r}; choose one of {', '.join([BASE, *session.adapters])}"
            )
        session.format(name, row)  # fail early, with the line number, on an empty prompt
        rows.append((name, row))
    order = sorted(
        range(len(rows)), key=lambda i: len(json.dumps(rows[i][1]))
    )  # similar lengths batch together
    results: dict[int, dict[str, Any]] = {}
    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("generate", total=len(rows))
        for start in range(0, len(order), options.batch_size):
            chunk = order[start : start + options.batch_size]
            names, batch = [rows[i][0] for i in chunk], [rows[i][1] for i in chunk]
            _seed(options)
            answers = session.answer(names, batch, options)
            base = session.answer([BASE] * len(chunk), batch, options) if compare else None
            for k, i in enumerate(chunk):
                out = dict(rows[i][1])
                out["generation"] = (
                    answers[k][0] if options.num_return_sequences == 1 else answers[k]
                )
                if base:
                    out["base_generation"] = (
                        base[k][0] if options.num_return_sequences == 1 else base[k]
                    )
                results[i] = out
            progress.update(task, advance=len(chunk))
    atomic_write_text(
        target, "".join(json.dumps(results[i], ensure_ascii=False) + "\n" for i in range(len(rows)))
    )
    if skipped:
        console.print(f"[yellow]warning[/]: skipped {skipped} bad lines of {source}")
    return len(rows)


def _read_jsonl(
    path: Path, skip_bad_lines: bool, console: Console
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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


def chat(session: Session, options: GenerateOptions, console: Console) -> None:
    """Interactive multi-turn chat through the tokenizer's chat template, streaming tokens."""
    name = next(iter(session.adapters))
    model = session.adapters[name]
    tokenizer = session.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ReftError("--chat needs a tokenizer with a chat template; use --prompt instead")
    system = model.reft_config.system_prompt
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
        _seed(options)
        out = model.generate(
            ids.input_ids, ids.attention_mask, streamer=streamer, **options.kwargs(tokenizer)
        )
        reply = tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
        history.append({"role": "assistant", "content": reply})


def _seed(options: GenerateOptions) -> None:
    if options.seed is not None:
        torch.manual_seed(options.seed)
