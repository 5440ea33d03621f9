"""Where cached frozen states live: in RAM up to one budget, then in files on disk up to another.

Each example's tensors are kept whole or not at all. RAM is tried first because reading it is free;
an example that no longer fits there goes to a safetensors file in a temporary folder (inside the
run folder, removed when the run ends), which is still far cheaper to read than recomputing the
frozen layers. An example that fits neither budget is simply recomputed each time it is seen.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

MIB = 2**20


class FrozenStore:
    """Per-example tensor dicts, keyed by example id, bounded by a RAM and a disk budget (bytes)."""

    def __init__(
        self, ram_bytes: int, disk_bytes: int = 0, disk_parent: Path | None = None
    ) -> None:
        self.ram_budget, self.disk_budget = ram_bytes, disk_bytes if disk_parent else 0
        self.disk_parent = disk_parent
        self.ram: dict[int, dict[str, Tensor]] = {}
        self.disk: dict[int, Path] = {}
        self.ram_used = self.disk_used = 0
        self._folder: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return len(self.ram) + len(self.disk)

    def get(self, key: int) -> dict[str, Tensor] | None:
        if key in self.ram:
            return self.ram[key]
        if key in self.disk:
            return load_file(self.disk[key])
        return None

    def put(self, key: int, tensors: dict[str, Tensor]) -> bool:
        """Keep `tensors` (owning their memory) in RAM or else on disk; False when neither has room."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.ram_used + size <= self.ram_budget:
            self.ram[key] = tensors
            self.ram_used += size
            return True
        if self.disk_used + size <= self.disk_budget:
            path = self._files() / f"{key}.safetensors"
            save_file({k: v.contiguous() for k, v in tensors.items()}, path)
            self.disk[key] = path
            self.disk_used += size
            return True
        return False

    def _files(self) -> Path:
        if self._folder is None:
            self.disk_parent.mkdir(parents=True, exist_ok=True)
            self._folder = tempfile.TemporaryDirectory(
                prefix=".frozen-cache-", dir=self.disk_parent
            )
        return Path(self._folder.name)

    def clear(self) -> None:
        """Forget everything and delete the files."""
        self.ram.clear()
        self.disk.clear()
        self.ram_used = self.disk_used = 0
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def describe(self) -> str:
        line = (
            f"{len(self.ram)} in RAM ({self.ram_used / MIB:.1f} of {self.ram_budget / MIB:.0f} MiB)"
        )
        if self.disk_budget:
            line += (
                f", {len(self.disk)} on disk ({self.disk_used / MIB:.1f} of "
                f"{self.disk_budget / MIB:.0f} MiB)"
            )
        return line
