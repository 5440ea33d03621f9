"""`python -m reft_cli.evaluation.harness ...`: lm-eval's own command line, with `--model reft`.

lm-eval 0.4 looks models up in its own registry only (it reads no entry points), so a plain
`lm_eval --model reft` cannot find ours. This wrapper imports our model class, which registers
`reft`, puts the offline task folder on lm-eval's `--include_path` (before any path given, so a
user's own tasks still win) and hands everything else to lm-eval unchanged. `--hub-tasks` leaves
the include path alone: lm-eval's stock tasks, their data from the hub.

    python -m reft_cli.evaluation.harness --model reft --model_args adapter=out/run \\
        --tasks piqa,arc_easy --limit 100 --output_path out/run/lm_eval
"""

from __future__ import annotations

import sys

from reft_cli.errors import ReftError

HUB_FLAG = "--hub-tasks"
INCLUDE = "--include_path"


def lm_eval_args(args: list[str], offline: str | None) -> list[str]:
    """The arguments for lm-eval: `offline` first on the include path when given."""
    args = [a for a in args if a != HUB_FLAG]
    if offline is None or not args or args[0] in ("-h", "--help", "validate"):
        return args
    if INCLUDE in args[:-1]:
        at = args.index(INCLUDE) + 1
        return [*args[:at], f"{offline}:{args[at]}", *args[at + 1 :]]
    return [*args, INCLUDE, offline]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from lm_eval.__main__ import cli_evaluate

        import reft_cli.evaluation.harness.model  # noqa: F401 - registers --model reft
        from reft_cli.evaluation.harness.offline_tasks import write_offline_tasks
    except ImportError as err:
        sys.exit(f"error: the harness backend needs lm-eval: pip install 'reft[harness]' ({err})")
    offline = None if HUB_FLAG in args else str(write_offline_tasks()[0])
    sys.argv = ["lm_eval", *lm_eval_args(args, offline)]
    try:
        cli_evaluate()
    except ReftError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
