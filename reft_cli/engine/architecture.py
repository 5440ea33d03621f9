"""Finding where to intervene in any transformers model, without a per-class table of module paths.

The block stack is the largest `nn.ModuleList` of identical blocks whose length is the model's layer
count; inside a block, attention and MLP submodules are found by the names transformers uses across
families (`self_attn`, `attn`, `attention`, `mlp`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reft_cli.engine.adapter_config import check_layers
from reft_cli.errors import ReftError

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class Architecture:
    """What an intervention needs to know about a base model."""

    blocks: nn.ModuleList
    hidden_size: int
    num_layers: int

    @classmethod
    def of(cls, model: nn.Module) -> Architecture:
        _, blocks = find_block_stack(model)
        return cls(blocks, hidden_size(model), len(blocks))

    def site(self, layer: int, component: str) -> tuple[nn.Module, str]:
        """The module to hook for (layer, component) and the hook kind: `output` or `input`."""
        check_layers([layer], self.num_layers)
        block = self.blocks[layer]
        if component == "block_output":
            return block, "output"
        if component == "block_input":
            return block, "input"
        names = ATTENTION_NAMES if component == "attention_output" else MLP_NAMES
        for name in names:
            child = getattr(block, name, None)
            if isinstance(child, nn.Module):
                return child, "output"
        children = ", ".join(name for name, _ in block.named_children())
        raise ReftError(
            f"{type(block).__name__} has no {component.removesuffix('_output')} submodule "
            f"(its children: {children}); use block_output or block_input instead"
        )


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None)


def find_block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of decoder (or encoder) blocks, and its dotted path."""
    expected = _num_layers(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(block) for block in module}) == 1
        and (expected is None or len(module) == expected)
    ]
    if not candidates:
        raise ReftError(
            f"could not find the stack of transformer blocks in {type(model).__name__}: no list of "
            f"{expected or 'identical'} blocks; reft supports transformers decoder and encoder models"
        )
    # The shallowest match is the model's own stack (not a list nested inside a block).
    return min(candidates, key=lambda item: (item[0].count("."), -len(item[1])))


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "hidden_size", None)
    if not isinstance(size, int):
        raise ReftError(
            f"{type(model).__name__}'s config has no hidden_size; cannot size interventions"
        )
    return size
