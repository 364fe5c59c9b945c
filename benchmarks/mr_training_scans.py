"""The MR training scans of the bundled model, as the guided-averaging grids read them.

Shared by ``guided_means_grid.py``, ``guided_radius_grid.py`` and ``network_sigma_scale.py`` (run
them from the repository root as ``python benchmarks/NAME.py``; this module sits beside them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

SCANS = ("seg3d_T1_head.nii.gz", "rorden_clinical_T2_1mm.nii.gz")


def parse_args(add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--data-dir`` (default ../shared/data/reference beside the checkout), ``--levels`` in percent,
    and whatever ``add`` puts on the parser."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    parser.add_argument("--levels", type=float, nargs="+", default=[3.0, 5.0, 9.0])
    if add is not None:
        add(parser)
    return parser.parse_args()


def network_estimate(denoiser: Any, y: np.ndarray, sigma: float, scale: float) -> np.ndarray:
    """The bundled MR model's estimate of ``y`` without guided averaging, told ``scale x sigma``."""
    from medidiff.volume import Volume

    volume = Volume.from_array(y, np.eye(4), modality="MR")
    return denoiser.denoise_volume(volume, sigma=sigma, guided_radius=0, network_sigma_scale=scale).volume.data[0]


def training_scans(data_dir: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each scan's name, its data scaled to its 99.9th percentile, and its foreground mask."""
    from medidiff import metrics
    from medidiff.io import read_volume

    for scan in SCANS:
        x = read_volume(str(Path(data_dir) / scan)).data[0].astype(np.float32)
        x /= np.percentile(x, 99.9)
        yield scan, x, metrics.foreground_mask(x, "MR", slice_axis=2)
