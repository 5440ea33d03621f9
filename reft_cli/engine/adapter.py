"""One named ReFT adapter: its record (ReftConfig) and its interventions, one group per site.

A ReftModel holds any number of these on one base model. Each intervention is built on the device of
the layer it edits, so a model spread over several GPUs (`device_map="auto"`) edits each layer where
its hidden states are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from reft_cli.engine.adapter_config import ReftConfig
from reft_cli.engine.architecture import Architecture
from reft_cli.engine.interventions import Rotation, build_intervention
from reft_cli.engine.positions import Positions, compute_positions
from reft_cli.errors import ReftError

BASE = "base"
"""The name that selects the plain base model for a row (no adapter's edits)."""
INTERVENTION_PREFIX = "interventions."
"""Tensor names in reft_model.safetensors start with this (the adapter's own state-dict names)."""


class Adapter(nn.Module):
    """The interventions of one adapter: `interventions[i][group]` edits site i's positions."""

    def __init__(self, config: ReftConfig, architecture: Architecture) -> None:
        super().__init__()
        self.config = config
        groups = config.position_spec.groups(config.share_weights)
        sites = nn.ModuleList()
        for site in config.interventions:
            module, _ = architecture.site(site.layer, site.component)
            built = nn.ModuleDict(
                {
                    group: build_intervention(
                        site.type,
                        architecture.hidden_size,
                        site.rank,
                        dropout=site.dropout,
                        act_fn=site.act_fn,
                        add_bias=site.add_bias,
                    )
                    for group in groups
                }
            )
            device = _device_of(module)
            sites.append(built if device is None else built.to(device))
        self.interventions = sites
        self.rotations = [m for m in sites.modules() if isinstance(m, Rotation)]

    def refresh(self) -> None:
        """Compute each orthonormal R once for the coming forward pass."""
        for rotation in self.rotations:
            rotation.refresh()

    def positions(self, prompt_lengths: Tensor, attention_mask: Tensor) -> dict[str, Positions]:
        """The positions this adapter edits in a batch, by group."""
        config = self.config
        return compute_positions(
            config.position_spec, config.share_weights, prompt_lengths, attention_mask
        )

    def explicit_positions(
        self, explicit: Tensor | Mapping[str, Tensor], device: torch.device
    ) -> dict[str, Positions]:
        """Caller-chosen (B, K) indices (negative: unused slot), one tensor or one per group."""
        groups = self.config.position_spec.groups(self.config.share_weights)
        if not isinstance(explicit, Mapping):
            explicit = dict.fromkeys(groups, explicit)
        missing = [g for g in groups if g not in explicit]
        if missing:
            raise ReftError(
                f"intervention_positions lacks groups {missing}; this adapter has {list(groups)}"
            )
        return {
            g: Positions.from_explicit(torch.as_tensor(explicit[g], device=device)) for g in groups
        }

    def state(self) -> dict[str, Tensor]:
        """The intervention tensors under the names an adapter file stores them by."""
        return {INTERVENTION_PREFIX + k: v for k, v in self.interventions.state_dict().items()}


Plan = dict[str, dict[str, Positions]]  # adapter name -> group -> positions


def rows_plan(
    adapters: Mapping[str, Adapter],
    adapter_names: Sequence[str],
    prompt_lengths: Tensor,
    attention_mask: Tensor,
) -> Plan:
    """Each named adapter's positions, masked to its own rows (`base` rows get none).

    The names are host data, so choosing rows costs no device sync; the masks are built once per
    adapter, not per row.
    """
    if len(adapter_names) != attention_mask.shape[0]:
        raise ReftError(
            f"adapter_names has {len(adapter_names)} entries for a batch of "
            f"{attention_mask.shape[0]}"
        )
    plan: Plan = {}
    for name in dict.fromkeys(adapter_names):
        if name == BASE:
            continue
        rows = torch.tensor([n == name for n in adapter_names], device=attention_mask.device)
        positions = adapters[name].positions(prompt_lengths, attention_mask)
        plan[name] = {g: Positions(p.index, p.mask & rows[:, None]) for g, p in positions.items()}
    return plan


def _device_of(module: nn.Module) -> torch.device | None:
    """Where a layer's parameters live (None for a site without any, such as an identity)."""
    for param in module.parameters():
        return param.device
    for buffer in module.buffers():
        return buffer.device
    return None
