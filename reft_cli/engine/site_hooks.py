"""One persistent hook per intervened site (layer, component), whatever the number of adapters.

Hooks are registered when the first adapter needs a site and removed when the last one leaves, and
stay in place in between, so gradient checkpointing recomputes the same graph and other libraries'
hooks are left alone. The hook hands the site's hidden states to the model's edit function, which
and returns at once when nothing is armed, as on every decode step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from reft_cli.engine.architecture import Architecture
from reft_cli.engine.interventions import Intervention
from reft_cli.engine.positions import Positions
from reft_cli.errors import ReftError

Site = tuple[int, str]  # (layer, component)
Edit = Callable[[Site, Tensor], Tensor]


class SiteHooks:
    """Which adapters (and which of their interventions) use each site, and its one hook."""

    def __init__(self, architecture: Architecture, edit: Edit, armed: Callable[[], bool]) -> None:
        self.architecture = architecture
        self.edit = edit
        self.armed = armed
        self._users: dict[Site, list[tuple[str, int]]] = {}
        self._handles: dict[Site, RemovableHandle] = {}

    def add(self, key: Site, adapter: str, index: int) -> None:
        """Adapter `adapter`'s intervention `index` edits at `key`."""
        self._users.setdefault(key, []).append((adapter, index))
        if key not in self._handles:
            self._handles[key] = self._register(key)

    def users(self, key: Site) -> list[tuple[str, int]]:
        return self._users.get(key, [])

    def remove_adapter(self, adapter: str) -> None:
        """Forget an adapter; a site nobody uses any more loses its hook."""
        for key in list(self._users):
            self._users[key] = [(n, i) for n, i in self._users[key] if n != adapter]
            if not self._users[key]:
                del self._users[key]
                self._handles.pop(key).remove()

    def remove_all(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        self._users = {}

    @property
    def count(self) -> int:
        """How many hooks are registered (one per site in use)."""
        return len(self._handles)

    def _register(self, key: Site) -> RemovableHandle:
        layer, component = key
        module, kind = self.architecture.site(layer, component)
        edit, armed = self.edit, self.armed
        if kind == "input":

            def pre_hook(
                _module: nn.Module, args: tuple, kwargs: dict
            ) -> tuple[tuple, dict] | None:
                if not armed():  # decode steps and disabled adapters: nothing to do
                    return None
                if args:
                    return (edit(key, args[0]), *args[1:]), kwargs
                if "hidden_states" in kwargs:
                    return args, {**kwargs, "hidden_states": edit(key, kwargs["hidden_states"])}
                raise ReftError(f"cannot find the hidden states passed to layer {layer}")

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
            if not armed():
                return None
            if isinstance(output, Tensor):
                return edit(key, output)
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                return (edit(key, output[0]), *output[1:])
            raise ReftError(
                f"unexpected output type {type(output).__name__} at layer {layer} {component}"
            )

        return module.register_forward_hook(hook)


def edit_positions(intervention: Intervention, hidden: Tensor, positions: Positions) -> Tensor:
    """hidden with the selected rows replaced by their edit; unselected rows are untouched bits."""
    if positions.index.shape[0] != hidden.shape[0]:
        raise ReftError(
            f"positions are for {positions.index.shape[0]} rows but the batch has {hidden.shape[0]}"
        )
    index = positions.index[..., None].expand(-1, -1, hidden.shape[-1])
    selected = hidden.gather(1, index)
    change = intervention(selected) - selected.float()
    change = torch.where(positions.mask[..., None], change, 0.0).to(hidden.dtype)
    return hidden.scatter_add(1, index, change)
