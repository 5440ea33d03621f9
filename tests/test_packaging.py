"""The wheel carries the shipped configs and data, so `reft configs` works from an installed wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_includes_configs_and_resources(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("reft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"reft_cli/configs/{p.relative_to(ROOT / 'configs')}"
        for p in (ROOT / "configs").rglob("*.yaml")
    }
    assert shipped and shipped <= names
    assert "reft_cli/resources/emoji.jsonl" in names
