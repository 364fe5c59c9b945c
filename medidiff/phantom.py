"""A synthetic head phantom with tissue classes: the package's own sample scan and extra training data.

Nested, randomly deformed ellipsoids give scalp, skull, CSF, grey matter, white matter, ventricles
and a few lesions; folded boundaries come from smooth random fields, and a smooth multiplicative
bias field and mild texture make it look acquired. Intensities follow T1 or T2 contrast in [0, 1].
Everything is drawn from a seeded NumPy generator, so a seed always gives the same phantom.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# tissue -> (T1, T2) intensity
_CONTRAST = {
    "background": (0.0, 0.0),
    "scalp": (0.85, 0.55),
    "skull": (0.08, 0.05),
    "csf": (0.18, 1.0),
    "grey": (0.55, 0.62),
    "white": (0.82, 0.42),
    "lesion": (0.35, 0.85),
}


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma=scale)
    return field / (np.abs(field).max() + 1e-12)


def head_phantom(
    shape: tuple[int, int, int] = (80, 96, 80),
    contrast: Literal["T1", "T2"] = "T1",
    seed: int = 0,
) -> np.ndarray:
    """A clean head phantom, float32 of ``shape`` (X: left-right, Y: posterior-anterior, Z: up).

    Args:
        shape: voxel grid; about 2 mm voxels for the default.
        contrast: ``"T1"`` (bright white matter) or ``"T2"`` (bright CSF).
        seed: the random draw of shapes, folds, lesions and bias field.
    """
    rng = np.random.default_rng(seed)
    idx = 1 if contrast == "T2" else 0
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    centre = rng.uniform(-0.04, 0.04, 3)
    axes = np.array([0.78, 0.9, 0.82]) * rng.uniform(0.92, 1.05, 3)
    radius = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes, strict=True)))
    radius = radius + 0.03 * _smooth_field(shape, rng, 6.0)
    folds = 0.2 * _smooth_field(shape, rng, 1.5)
    out = np.zeros(shape, dtype=np.float32)
    layers = [
        ("scalp", 1.0),
        ("skull", 0.93),
        ("csf", 0.86),
        ("grey", 0.82),
    ]
    for tissue, r in layers:
        out[radius < r] = _CONTRAST[tissue][idx]
    white = (radius + folds) < 0.66
    out[white] = _CONTRAST["white"][idx]
    # lateral ventricles: two small ellipsoids either side of the midline
    x, y, z = grids
    for side in (-1, 1):
        v = ((x - side * 0.12) / 0.08) ** 2 + ((y + 0.05) / 0.32) ** 2 + ((z - 0.1) / 0.14) ** 2
        out[v < 1.0] = _CONTRAST["csf"][idx]
    for _ in range(int(rng.integers(1, 4))):
        c = rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.04, 0.09)
        lesion = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < r**2
        out[lesion & (radius < 0.8)] = _CONTRAST["lesion"][idx]
    bias = 1.0 + 0.15 * _smooth_field(shape, rng, 12.0)
    texture = 1.0 + 0.02 * _smooth_field(shape, rng, 1.0)
    out = (out * bias * texture).astype(np.float32)
    out[radius >= 1.0] = 0.0
    return np.clip(out, 0.0, None).astype(np.float32)


def phantom_affine(shape: tuple[int, int, int], spacing: float = 2.0) -> np.ndarray:
    """A RAS affine with isotropic ``spacing`` mm voxels, centred on the origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2.0
    return affine
