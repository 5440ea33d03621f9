"""The intervention types: small modules that edit a batch of selected hidden states.

Each type states its formula in its docstring and is registered under its config name, so a new type
is one small class. Parameters live in fp32 whatever the model dtype; the edit is computed in fp32 on
the few selected vectors and written back by the caller in the activation dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers.activations import ACT2FN

from reft_cli.errors import ReftError, check_choice

INTERVENTIONS: dict[str, type[Intervention]] = {}


def register(name: str) -> Callable[[type[Intervention]], type[Intervention]]:
    """Class decorator: make an intervention type available as `type: name` in configs."""

    def add(cls: type[Intervention]) -> type[Intervention]:
        INTERVENTIONS[name] = cls
        cls.type_name = name
        return cls

    return add


def orthonormal_rows(weight: Tensor) -> Tensor:
    """The r×d matrix with orthonormal rows that spans the same row space as `weight`.

    Reduced QR of the d×r transpose costs O(d·r²) and needs no d×d buffer; fixing the signs of R's
    diagonal makes the map smooth and the identity on matrices that are already orthonormal.
    """
    q, r = torch.linalg.qr(weight.float().T)
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs).T


class Rotation(nn.Module):
    """R ∈ ℝ^{r×d} with orthonormal rows, stored as an unconstrained r×d parameter.

    `refresh()` computes R once per forward pass of the model; every read in that pass (and the
    gradient-checkpointing recompute of it) gets the same tensor. Reads outside a pass, or after the
    weight changed in place, compute R afresh.
    """

    def __init__(self, embed_dim: int, rank: int) -> None:
        super().__init__()
        if not 0 < rank <= embed_dim:
            raise ReftError(f"rank {rank} must be between 1 and the hidden size {embed_dim}")
        weight = torch.empty(rank, embed_dim)
        nn.init.orthogonal_(weight)
        self.weight = nn.Parameter(weight)
        self._cached: Tensor | None = None
        self._cached_version = -1

    def refresh(self) -> None:
        self._cached = orthonormal_rows(self.weight)
        self._cached_version = self.weight._version

    def forward(self) -> Tensor:
        if self._cached is not None and self._cached_version == self.weight._version:
            return self._cached
        return orthonormal_rows(self.weight)


class Intervention(nn.Module):
    """Base class: `forward(h)` returns dropout(h + Δ(h)) for h of shape (..., d), in fp32."""

    type_name = ""

    def __init__(
        self,
        embed_dim: int,
        rank: int,
        dropout: float = 0.0,
        act_fn: str | None = None,
        add_bias: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.rank = rank
        self.dropout = nn.Dropout(dropout)
        if act_fn is not None and act_fn not in ACT2FN:
            raise ReftError(f"unknown act_fn {act_fn!r}; choose one of {sorted(ACT2FN)}")
        self.act = ACT2FN[act_fn] if act_fn else nn.Identity()
        self.add_bias = add_bias

    def delta(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, h: Tensor) -> Tensor:
        h = h.float()
        return self.dropout(h + self.delta(h))


@register("loreft")
class LoReFT(Intervention):
    """LoReFT: h + Rᵀ(act(W h + b) − R h), R orthonormal rows."""

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotation = Rotation(embed_dim, rank)
        self.source = nn.Linear(embed_dim, rank)

    def delta(self, h: Tensor) -> Tensor:
        rot = self.rotation()
        return (self.act(self.source(h)) - h @ rot.T) @ rot


@register("noreft")
class NoReFT(Intervention):
    """NoReFT: h + W2ᵀ(act(W1 h + b) − W2 h), no orthogonality; W2 has a bias when `add_bias`."""

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.proj = nn.Linear(embed_dim, rank, bias=self.add_bias)
        self.source = nn.Linear(embed_dim, rank)

    def delta(self, h: Tensor) -> Tensor:
        return (self.act(self.source(h)) - self.proj(h)) @ self.proj.weight


@register("direft")
class DiReFT(Intervention):
    """DiReFT: h + W2ᵀ act(W1 h + b), no orthogonality (W2's bias, when added, is unused)."""

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.proj = nn.Linear(embed_dim, rank, bias=self.add_bias)
        self.source = nn.Linear(embed_dim, rank)

    def delta(self, h: Tensor) -> Tensor:
        return self.act(self.source(h)) @ self.proj.weight


@register("orth_direft")
class OrthDiReFT(Intervention):
    """Orthogonal DiReFT: h + Rᵀ act(W h + b), R orthonormal rows."""

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotation = Rotation(embed_dim, rank)
        self.source = nn.Linear(embed_dim, rank)

    def delta(self, h: Tensor) -> Tensor:
        return self.act(self.source(h)) @ self.rotation()


@register("consreft")
class ConsReFT(Intervention):
    """ConsReFT: h + Rᵀ(b − R h), b a learned constant (initialised uniform in [0, 1))."""

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotation = Rotation(embed_dim, rank)
        self.source = nn.Parameter(torch.rand(rank))

    def delta(self, h: Tensor) -> Tensor:
        rot = self.rotation()
        return (self.source - h @ rot.T) @ rot


@register("lobireft")
class LoBiReFT(Intervention):
    """LoBiReFT: h + Rᵀ b, a learned bias inside the subspace (b initialised uniform in [0, 1))."""

    def __init__(self, embed_dim: int, rank: int, **kwargs) -> None:
        super().__init__(embed_dim, rank, **kwargs)
        self.rotation = Rotation(embed_dim, rank)
        self.source = nn.Parameter(torch.rand(rank))

    def delta(self, h: Tensor) -> Tensor:
        return (self.source @ self.rotation()).expand_as(h)


def build_intervention(
    type_name: str,
    embed_dim: int,
    rank: int,
    dropout: float = 0.0,
    act_fn: str | None = None,
    add_bias: bool = False,
) -> Intervention:
    """An fp32 intervention of the named type; an unknown name lists the registered ones."""
    check_choice("intervention type", type_name, INTERVENTIONS)
    cls = INTERVENTIONS[type_name]
    return cls(embed_dim, rank, dropout=dropout, act_fn=act_fn, add_bias=add_bias).float()
