"""reft's log-likelihood scorer against lm-evaluation-harness, row by row, on more rows than the test.

For each task, the first N rows of its offline validation copy are scored by `reft eval --scoring
loglik` and by lm-eval (`--model reft`, the offline task, lm-eval's own prompt); a row agrees when
both got it right or both wrong. Where the prompts agree (every task but boolq, whose reft context
leaves out the passage on purpose) agreement must be 100 %. Needs the harness extra.

    python bench/harness_crosscheck.py --limit 200                    # the embedded SmolLM2
    python bench/harness_crosscheck.py --limit 200 --adapter out/commonsense-loglik
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reft_cli.config.shipped import find_config
from reft_cli.evaluation.harness.crosscheck import SAME_PROMPTS, crosscheck


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join([*SAME_PROMPTS, "boolq"]))
    parser.add_argument("--limit", type=int, default=200, help="rows per task")
    parser.add_argument("--adapter", type=Path, help="a reft adapter folder (default: none)")
    parser.add_argument(
        "--config", type=Path, help="the base model's config (default: commonsense-loglik)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the per-task numbers here")
    args = parser.parse_args()
    config = args.config or (None if args.adapter else find_config("commonsense-loglik"))
    start = time.perf_counter()
    results = crosscheck(
        [t for t in args.tasks.split(",") if t],
        args.limit,
        adapter=args.adapter,
        config=config,
        device=args.device,
        batch_size=args.batch_size,
    )
    rows = []
    print(
        f"{'task':<14} {'rows':>5} {'reft acc':>9} {'lm-eval acc':>12} {'agree':>7}  differing rows"
    )
    for task, check in results.items():
        n = len(check.reft)
        row = {
            "task": task,
            "rows": n,
            "reft_acc": sum(check.reft) / n,
            "lm_eval_acc": sum(check.harness) / n,
            "agreement": check.agreement,
            "differing_rows": check.disagreeing_rows,
            "reft_seconds": round(check.reft_seconds, 1),
            "lm_eval_seconds": round(check.harness_seconds, 1),
        }
        rows.append(row)
        print(
            f"{task:<14} {n:>5} {100 * row['reft_acc']:>8.1f}% {100 * row['lm_eval_acc']:>11.1f}% "
            f"{100 * check.agreement:>6.1f}%  {check.disagreeing_rows[:12]}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
