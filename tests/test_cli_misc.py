"""CLI behaviour that is not about one subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import write_phantom


def test_output_piped_into_head_is_not_an_error(tmp_path: Path) -> None:
    scan = write_phantom(tmp_path / "s.nii.gz")
    proc = subprocess.run(
        f"{sys.executable} -m medidiff info {scan} | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("path:")
    assert "error" not in proc.stderr, proc.stderr
