"""CLI behaviour that is not about one subcommand."""

from __future__ import annotations

import argparse
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


def test_denoise_help_states_the_defaults_the_denoiser_uses() -> None:
    import medidiff.inference as inf
    from medidiff.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: " ".join((a.help or "").split()) for a in sub.choices["denoise"]._actions}
    steps = set(inf.DEFAULT_STEPS.values())
    assert len(steps) == 1 and f"(default: {steps.pop()}, ancestral {inf.DEFAULT_STOCHASTIC_STEPS})" in helps["steps"]
    tables = {
        "blend": inf.DEFAULT_BLEND,
        "guided_radius": inf.DEFAULT_GUIDED_RADIUS,
        "detail_floor": inf.DEFAULT_DETAIL_FLOOR,
        "network_sigma_scale": inf.DEFAULT_NETWORK_SIGMA_SCALE,
    }
    for dest, table in tables.items():
        closing = ", rising" if dest == "network_sigma_scale" else ")"
        assert f"(default: MR {table['MR']:g}, CT {table['CT']:g}{closing}" in helps[dest], dest
    fine = f"rising to {inf.CT_FINE_PIXEL_SCALE:g} for CT pixels of {inf.CT_FINE_PIXEL_MM[1]:g} mm and below)"
    assert fine in helps["network_sigma_scale"]
