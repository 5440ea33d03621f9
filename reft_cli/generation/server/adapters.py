"""The served model names: the base model, its adapters, and adapters loaded or unloaded at runtime.

Runtime loading is off unless asked for, and then reads only folders under the adapter root (after
resolving symlinks), only their safetensors and JSON files (`ReftModel.load_adapter`), and only
adapters made for this base model. Changes to the model run on the engine's thread.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from reft_cli.engine.lora_config import LoraAdapterConfig, load_adapter_config
from reft_cli.engine.reft_model import BASE, ReftModel
from reft_cli.errors import ReftError
from reft_cli.generation.server.engine import Engine
from reft_cli.generation.server.errors import ApiError, bad_request


class Models:
    """Names the API accepts in `model`, and what `/v1/models` lists."""

    def __init__(
        self,
        engine: Engine,
        base_name: str,
        folders: dict[str, Path],
        adapter_root: Path | None = None,
        max_model_len: int = 2048,
        max_new_tokens: int = 1024,
    ) -> None:
        self.engine = engine
        self.loaded = engine.loaded
        self.tokenizer = self.loaded.tokenizer
        self.base_name = base_name
        self.folders = dict(folders)
        self.adapter_root = adapter_root.resolve() if adapter_root is not None else None
        self.max_model_len = max_model_len
        self.max_new_tokens = max_new_tokens
        self.created = int(time.time())

    def resolve(self, model: str) -> str:
        """The adapter a request's `model` names (`base` for the base model), or a 404."""
        if model in (self.base_name, BASE):
            return BASE
        if model in self.folders:
            return model
        raise ApiError(404, f"The model `{model}` does not exist.", "model_not_found", "model")

    def system_prompt(self, adapter: str) -> str | None:
        record = self.loaded.records.get(adapter)
        return record.system_prompt if record is not None else None

    def listing(self) -> dict[str, Any]:
        def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
            return {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "reft",
                "root": root,
                "parent": parent,
                "max_model_len": self.max_model_len,
            }

        cards = [card(self.base_name, self.base_name, None)]
        cards += [card(n, str(p), self.base_name) for n, p in self.folders.items()]
        return {"object": "list", "data": cards}

    # ----------------------------------------------------------------- runtime loading
    async def load(self, name: str, path: str) -> None:
        if name in (BASE, self.base_name) or not name or "/" in name:
            raise bad_request(f"{name!r} cannot name an adapter", "lora_name")
        if name in self.folders:
            raise bad_request(f"an adapter named {name!r} is already loaded", "lora_name")
        folder = self._inside_root(path)
        record = _record(folder)
        if record.base_model and not _same_model(record.base_model, self.base_name):
            raise bad_request(
                f"{folder} is an adapter for {record.base_model}, but this server serves "
                f"{self.base_name}",
                "lora_path",
                "base_model_mismatch",
            )
        model = self.loaded.model
        assert isinstance(model, ReftModel)

        def attach() -> None:
            model.load_adapter(name, folder)
            self.loaded.records[name] = model.adapters[name].config

        await self._on_engine(attach)
        self.folders[name] = folder

    async def unload(self, name: str) -> None:
        if name not in self.folders:
            raise ApiError(
                404, f"no adapter named {name!r} is loaded", "model_not_found", "lora_name"
            )
        model = self.loaded.model
        assert isinstance(model, ReftModel)

        def detach() -> None:
            model.delete_adapter(name)
            del self.loaded.records[name]

        await self._on_engine(detach)
        del self.folders[name]

    async def _on_engine(self, fn: Any) -> None:
        try:
            await asyncio.wrap_future(self.engine.call(fn))
        except ReftError as err:
            raise bad_request(str(err), "lora_path", "adapter_load_failed") from None

    def _inside_root(self, path: str) -> Path:
        root = self.adapter_root
        if root is None:
            raise ApiError(403, "adapter loading needs --adapter-root", "adapter_loading_disabled")
        folder = (root / path).resolve()  # a relative path is under the root; symlinks resolved
        if not folder.is_relative_to(root):
            raise ApiError(
                403,
                f"{path} is outside the adapter root {root}; only folders under it may be loaded",
                "path_not_allowed",
                "lora_path",
            )
        if not folder.is_dir():
            raise bad_request(f"adapter folder {path} does not exist", "lora_path", "not_found")
        return folder


def _record(folder: Path) -> Any:
    try:
        record = load_adapter_config(folder)
    except ReftError as err:
        raise bad_request(str(err), "lora_path", "not_an_adapter") from None
    if isinstance(record, LoraAdapterConfig):
        raise bad_request(
            f"{folder} is a LoRA adapter; this server serves ReFT adapters only",
            "lora_path",
            "unsupported_adapter",
        )
    if record.task_type != "causal_lm":
        raise bad_request(
            f"{folder} is a {record.task_type} adapter; only causal_lm adapters generate",
            "lora_path",
            "unsupported_adapter",
        )
    return record


def _same_model(a: str, b: str) -> bool:
    """Hub ids compare as text; local folders by their resolved paths."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
