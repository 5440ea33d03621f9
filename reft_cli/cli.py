"""The `reft` command line. Each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from reft_cli.config_validation import ConfigError, render_problems
from reft_cli.errors import ReftError

app = typer.Typer(
    help="Representation Finetuning (ReFT) of language models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """Representation Finetuning (ReFT) of language models."""


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/emoji.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides with dotted paths."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build everything, show it, then exit."),
) -> None:
    """Train a ReFT adapter as CONFIG says; the output folder is the adapter.

    Examples:
      reft train configs/emoji.yaml
      reft train configs/emoji.yaml train.num_train_epochs=40 train.output_dir=out/emoji-40
      reft train configs/emoji.yaml --dry-run
    """
    from reft_cli.config import load_config

    run = load_config(_config_path(config), overrides or [])
    if dry_run:
        from reft_cli.dry_run import show
        from reft_cli.trainer import build

        show(build(run), console)
        return
    from reft_cli.trainer import Trainer

    trainer = Trainer(run, console)
    try:
        summary = trainer.train()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if trainer.main:
        console.print(summary.table())


configs_app = typer.Typer(help="The configs that ship with reft.", no_args_is_help=True)
app.add_typer(configs_app, name="configs")


@configs_app.command("list")
def configs_list() -> None:
    """List the shipped configs with the first line of each header."""
    from reft_cli.shipped import shipped_configs

    for name, summary in shipped_configs():
        console.print(f"[bold]{name}[/]  {summary}", highlight=False)


@configs_app.command("show")
def configs_show(name: str = typer.Argument(..., help="A name from `reft configs list`.")) -> None:
    """Print a shipped config."""
    from reft_cli.shipped import read_config

    console.print(read_config(name), highlight=False, markup=False)


@configs_app.command("copy")
def configs_copy(
    name: str = typer.Argument(..., help="A name from `reft configs list`."),
    dest: Path = typer.Argument(..., help="Where to write it (a file or a folder)."),
) -> None:
    """Copy a shipped config to edit it; refuses to overwrite an existing file."""
    from reft_cli.shipped import copy_config

    console.print(f"wrote {copy_config(name, dest)}")


def _config_path(config: Path) -> Path:
    """A config path, or the name of a shipped config (`emoji` or `emoji.yaml`)."""
    if config.exists():
        return config
    from reft_cli.shipped import find_config

    return find_config(str(config)) or config


@app.command()
def smoke(
    model: str = typer.Option("smollm2-135m-instruct", help="Alias, hub id or local folder."),
    layers: str = typer.Option("15", help="Layers to intervene on: 'all', '15' or '2;10;18'."),
    rank: int = typer.Option(4, min=1, help="Rank r of each intervention."),
    positions: str = typer.Option("l1", help="Prompt positions, e.g. l1, f1+l1, f7+l7."),
    steps: int = typer.Option(20, min=1, help="Optimizer steps on the fixed batch."),
    learning_rate: float = typer.Option(4e-3, min=0.0, help="AdamW learning rate."),
    out: Path = typer.Option(Path("out/smoke"), help="Where to write the adapter."),
    overwrite: bool = typer.Option(False, help="Replace an adapter already in --out."),
) -> None:
    """Check an install end to end: train the emoji config a few steps, save, reload, compare.

    Example: reft smoke --steps 10 --out out/smoke
    """
    from reft_cli.smoke import run_smoke, summary

    result = run_smoke(
        model, layers, rank, positions, steps, learning_rate, out, overwrite, console
    )
    console.print(summary(result, out))
    if not result.passed:
        raise ReftError(
            "smoke check failed: training did not lower the loss or reloading changed outputs"
        )


@app.command()
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
    from reft_cli.generate_cli import GenerateOptions, Session, answer_file, answer_prompts
    from reft_cli.generate_cli import chat as run_chat

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


def main() -> None:
    """Console entry point: user errors print one line and exit 2, without a traceback."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except ConfigError as err:
        console.print(render_problems(err))
        sys.exit(2)
    except ReftError as err:
        console.print(Text.assemble(("error: ", "bold red"), str(err)), soft_wrap=True)
        sys.exit(2)


@app.command("eval")
def eval_(
    config: Path | None = typer.Argument(
        None, help="YAML config (its eval section; the adapter is train.output_dir)."
    ),
    overrides: list[str] = typer.Argument(None, help="key=value overrides with dotted paths."),
    adapter: Path | None = typer.Option(None, "--adapter", help="Adapter folder to evaluate."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Evaluate the base model."),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Comma-separated tasks; TASK=SOURCE reads another copy of its data."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N examples per task."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Prompts per batch."),
    split: str | None = typer.Option(
        None,
        "--split",
        help="test (the paper's; GLUE: the reported half of its re-split validation split), "
        "selection (GLUE's other half), a slice like validation[200:], or test of validation[500:].",
    ),
    max_new_tokens: int | None = typer.Option(
        None,
        "--max-new-tokens",
        min=1,
        help="New tokens per answer, for every task (default: eval.max_new_tokens; if null, each "
        "task's paper length: commonsense 32, math 512, gsm8k 256, alpaca_eval 2048).",
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Results folder (default: ADAPTER/eval)."
    ),
    scoring: str | None = typer.Option(
        None,
        "--scoring",
        help="generate (exact match of generated answers) or loglik (multiple-choice sets: the "
        "likeliest answer option). Default: the config's eval.scoring, else generate.",
    ),
) -> None:
    """Score an adapter (or its base model) on the paper's benchmarks.

    Examples:
      reft eval configs/commonsense-mini.yaml
      reft eval --adapter out/commonsense --tasks boolq,piqa --limit 100
      reft eval configs/glue-mini.yaml --no-adapter
      reft eval --no-adapter configs/commonsense-mini.yaml --scoring loglik
    """
    from reft_cli.evaluate import EvalOptions, run_eval

    options = EvalOptions(
        config=_config_path(config) if config is not None else None,
        overrides=overrides or [],
        adapter=adapter,
        no_adapter=no_adapter,
        tasks=[t for t in tasks.split(",") if t.strip()] if tasks else None,
        limit=limit,
        batch_size=batch_size,
        split=split,
        max_new_tokens=max_new_tokens,
        output=output,
        scoring=scoring,
    )
    run_eval(options, console)


@app.command("export")
def export(
    adapter: Path = typer.Option(..., "--adapter", help="Adapter folder written by reft."),
    format: str = typer.Option(..., "--format", help="pyreft (pyreft's layout) or hub."),
    out: Path = typer.Option(..., "--out", help="New folder to write (must not exist)."),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Then upload OUT to this hub repository (user/name)."
    ),
    license: str | None = typer.Option(
        None, "--license", help="License for the card (default: the base model's, when known)."
    ),
) -> None:
    """Write an adapter in pyreft's layout, or as a model-hub folder with a model card.

    Examples:
      reft export --adapter out/emoji --format pyreft --out out/emoji-pyreft
      reft export --adapter out/emoji --format hub --out out/emoji-hub
      reft export --adapter out/emoji --format hub --out out/emoji-hub --push-to-hub me/emoji-reft
    """
    from reft_cli.export import export_adapter

    result = export_adapter(adapter, format, out, push_to_hub, license)
    console.print("\n".join(result.lines()), highlight=False, markup=False)


@app.command("import")
def import_(
    pyreft_dir: Path = typer.Argument(..., help="Folder saved by pyreft's ReftModel.save."),
    out: Path = typer.Option(..., "--out", help="New reft adapter folder (must not exist)."),
    base_model: str | None = typer.Option(
        None, "--base-model", help="Alias, hub id or folder of the model it was trained on."
    ),
    positions: str | None = typer.Option(
        None, "--positions", help="Prompt positions it was trained with (default f1+l1)."
    ),
    share_weights: bool | None = typer.Option(
        None, "--share-weights/--no-share-weights", help="Tied or untied (default: from layout)."
    ),
    dropout: float | None = typer.Option(None, "--dropout", help="Dropout (default 0)."),
    act_fn: str | None = typer.Option(None, "--act-fn", help="Activation (default: none)."),
    task_type: str | None = typer.Option(
        None, "--task-type", help="causal_lm or seq_cls (default: seq_cls if a head is saved)."
    ),
) -> None:
    """Read a pyreft adapter folder into reft's format; says which settings it had to assume.

    Examples:
      reft import pyreft-out --base-model meta-llama/Llama-2-7b-hf --out out/imported
      reft import pyreft-out --base-model ./base --out out/imported --positions f7+l7 --act-fn gelu
    """
    from reft_cli.pyreft_import import ImportOptions, import_pyreft

    result = import_pyreft(
        ImportOptions(
            pyreft_dir, out, base_model, positions, share_weights, dropout, act_fn, task_type
        )
    )
    console.print("\n".join(result.lines()), highlight=False, markup=False)


@app.command("reproduce")
def reproduce_(
    recipe: Path = typer.Argument(..., help="A recipe YAML, e.g. recipes/offline-glue.yaml."),
    only: str | None = typer.Option(None, "--only", help="Comma-separated runs to do now."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the recipe, show the plan, exit."),
    force: bool = typer.Option(False, "--force", help="Run a GPU recipe on a machine without one."),
) -> None:
    """Train and evaluate a recipe's runs, then write report.md/.json/.png; exit 1 on a miss.

    Finished runs are kept and interrupted ones resume, so running it again picks up where it
    stopped.

    Examples:
      reft reproduce recipes/offline-glue.yaml
      reft reproduce recipes/offline-commonsense.yaml --only loreft --dry-run
    """
    from reft_cli.recipes import load_recipe
    from reft_cli.reproduce import reproduce

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    report = reproduce(load_recipe(recipe), console, names, dry_run=dry_run, force=force)
    if report is not None and report.failed:
        console.print(f"[bold red]{len(report.failed)} expectation(s) missed[/]")
        raise typer.Exit(1)
