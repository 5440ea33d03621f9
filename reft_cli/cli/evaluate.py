"""`reft eval`: score an adapter or its base model on the paper's benchmarks."""

from __future__ import annotations

from pathlib import Path

import typer

from reft_cli.cli.common import config_path, console
from reft_cli.errors import ReftError


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
    device: str = typer.Option(
        "auto", "--device", help="auto (the accelerator when present), cpu, cuda, cuda:N or mps."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a non-empty --output folder as a whole."
    ),
    harness: str | None = typer.Option(
        None,
        "--harness",
        help="Comma-separated lm-evaluation-harness tasks, scored by lm-eval itself with its own "
        "prompts (needs lm-eval, the harness extra); offline copies of piqa, arc_easy, arc_challenge, "
        "hellaswag, winogrande, boolq, openbookqa, sciq, copa, gsm8k.",
    ),
    hub_tasks: bool = typer.Option(
        False, "--hub-tasks", help="With --harness: lm-eval's stock tasks, data from the hub."
    ),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", min=0, help="With --harness: few-shot examples per prompt."
    ),
    skip: int = typer.Option(
        0,
        "--skip",
        min=0,
        help="With --harness and --limit: leave out each task's first N rows (an offline "
        "config's training rows) and score the --limit rows after them.",
    ),
) -> None:
    """Score an adapter (or its base model) on the paper's benchmarks.

    Examples:
      reft eval configs/commonsense-mini.yaml
      reft eval --adapter out/commonsense --tasks boolq,piqa --limit 100
      reft eval configs/glue-mini.yaml --no-adapter
      reft eval --no-adapter configs/commonsense-mini.yaml --scoring loglik
      reft eval --harness piqa,arc_easy --adapter out/commonsense --limit 100
    """
    given = {"--tasks": tasks, "--split": split, "--scoring": scoring}
    given["--max-new-tokens"] = max_new_tokens
    if harness is not None and any(v is not None for v in given.values()):
        clash = next(k for k, v in given.items() if v is not None)
        raise ReftError(f"--harness runs lm-eval's own tasks and prompts; drop {clash}")
    if harness is None and (hub_tasks or num_fewshot is not None or skip):
        raise ReftError("--hub-tasks, --num-fewshot and --skip go with --harness TASKS")
    if harness is not None:
        from reft_cli.evaluation.harness.run import HarnessOptions, run_harness

        run_harness(
            HarnessOptions(
                tasks=[t.strip() for t in harness.split(",") if t.strip()],
                adapter=adapter,
                config=config_path(config) if config is not None else None,
                overrides=overrides or [],
                no_adapter=no_adapter,
                limit=limit,
                skip=skip,
                batch_size=batch_size or 8,
                num_fewshot=num_fewshot,
                device=device,
                output=output,
                overwrite=overwrite,
                hub_tasks=hub_tasks,
            ),
            console,
        )
        return
    from reft_cli.evaluation.evaluate import EvalOptions, run_eval

    options = EvalOptions(
        config=config_path(config) if config is not None else None,
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
        device=device,
        overwrite=overwrite,
    )
    run_eval(options, console)
