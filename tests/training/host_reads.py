"""Spying on the Python-side reads of tensor values (each one a host-device sync on a GPU)."""

import sys
from collections.abc import Callable

import pytest
import torch

HOST_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")


def spy_host_reads(monkeypatch: pytest.MonkeyPatch, record: Callable[[str], None]) -> None:
    """Call `record(module name)` for every read of a tensor's values, naming the module that read."""
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def spy(tensor, *args, _real=real, **kwargs):
            record(sys._getframe(1).f_globals.get("__name__", ""))
            return _real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
