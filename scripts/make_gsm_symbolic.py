"""Write reft_cli/resources/gsm_symbolic.jsonl: GSM8K-style training rows for offline math runs.

GSM8K's train split is not available offline; reasoning-gym's `gsm_symbolic` generator makes
seeded variants of GSM8K problems with worked answers ending `#### N`, in GSM8K's own columns
(question, answer). The generator's instruction suffix is dropped so the prompts read like GSM8K's.
Needs `pip install reasoning-gym==0.1.25`; the file is committed, so runs do not.

    python scripts/make_gsm_symbolic.py
"""

from __future__ import annotations

import json
from pathlib import Path

import reasoning_gym

ROWS = 1000
SEED = 42
SUFFIX = " Give the result as your final answer. Do not include units."
TARGET = Path(__file__).parents[1] / "reft_cli" / "resources" / "gsm_symbolic.jsonl"


def main() -> None:
    rows = []
    for item in reasoning_gym.create_dataset("gsm_symbolic", size=ROWS, seed=SEED):
        question = item["question"].removesuffix(SUFFIX).strip()
        answer = item["metadata"]["answer_cot"].strip()
        final = answer.rpartition("####")[2].strip()
        if float(final) != float(item["answer"]):  # "#### 168.0" for 168 is fine
            raise SystemExit(
                f"worked answer {final!r} disagrees with the answer {item['answer']!r}"
            )
        rows.append({"question": question, "answer": answer})
    TARGET.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {TARGET}")


if __name__ == "__main__":
    main()
