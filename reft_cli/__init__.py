"""reft: Representation Finetuning (ReFT) of language models, from the command line and from Python.

The Python API is imported lazily so that `reft --help` does not wait for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "InterventionConfig": "reft_cli.engine.adapter_config",
    "LoraModel": "reft_cli.engine.lora",
    "ReftConfig": "reft_cli.engine.adapter_config",
    "ReftError": "reft_cli.errors",
    "ReftModel": "reft_cli.engine.reft_model",
    "get_reft_model": "reft_cli.engine.reft_model",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'reft_cli' has no attribute {name!r}")
