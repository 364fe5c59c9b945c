"""A synthetic head phantom with tissue classes: the package's own sample scan and extra training data.

Nested, randomly deformed ellipsoids give scalp, skull, CSF, grey matter, white matter, ventricles
and a few lesions; folded boundaries come from smooth random fields, and a smooth multiplicative
bias field and mild texture make it look acquired. Intensities follow T1 or T2 contrast in [0, 1],
or CT contrast in Hounsfield units (air -1000, bone about 1200, brain 25-40 HU; a few HU of smooth
texture instead of a bias field, which CT does not have, and a Gaussian point spread of half a
voxel, as a reconstruction has). Everything is drawn from a seeded NumPy generator, so a seed
always gives the same phantom.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# tissue -> (T1, T2, CT in HU); the CT lesion is a fresh bleed, brighter than brain
_CONTRAST = {
    "background": (0.0, 0.0, -1000.0),
    "scalp": (0.85, 0.55, 30.0),
    "skull": (0.08, 0.05, 1200.0),
    "csf": (0.18, 1.0, 8.0),
    "grey": (0.55, 0.62, 38.0),
    "white": (0.82, 0.42, 27.0),
    "lesion": (0.35, 0.85, 65.0),
}
_COLUMN = {"T1": 0, "T2": 1, "CT": 2}
# Gaussian point spread of the CT contrast, in voxels (full width at half maximum 1.2 voxels)
CT_PSF_SIGMA = 0.5


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma=scale)
    return field / (np.abs(field).max() + 1e-12)


def head_phantom(
    shape: tuple[int, int, int] = (80, 96, 80),
    contrast: Literal["T1", "T2", "CT"] = "T1",
    seed: int = 0,
) -> np.ndarray:
    """A clean head phantom, float32 of ``shape`` (X: left-right, Y: posterior-anterior, Z: up).

    Args:
        shape: voxel grid; about 2 mm voxels for the default.
        contrast: ``"T1"`` (bright white matter), ``"T2"`` (bright CSF), both in [0, 1], or
            ``"CT"`` (Hounsfield units, air -1000 around the head).
        seed: the random draw of shapes, folds, lesions and bias field. The same seed gives the same
            anatomy in every contrast.
    """
    if contrast not in _COLUMN:
        raise ValueError(f"contrast must be one of {sorted(_COLUMN)}, got {contrast!r}")
    rng = np.random.default_rng(seed)
    idx = _COLUMN[contrast]
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    centre = rng.uniform(-0.04, 0.04, 3)
    axes = np.array([0.78, 0.9, 0.82]) * rng.uniform(0.92, 1.05, 3)
    radius = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes, strict=True)))
    radius = radius + 0.03 * _smooth_field(shape, rng, 6.0)
    folds = 0.2 * _smooth_field(shape, rng, 1.5)
    out = np.full(shape, _CONTRAST["background"][idx], dtype=np.float32)
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
    bias = _smooth_field(shape, rng, 12.0)
    texture = _smooth_field(shape, rng, 1.0)
    if contrast == "CT":
        # CT numbers are calibrated: no bias field, a few HU of smooth texture (more in bone)
        from scipy.ndimage import gaussian_filter

        hu = out + (3.0 + 0.05 * np.clip(out, 0.0, None)) * (0.5 * bias + texture)
        hu[radius >= 1.0] = _CONTRAST["background"][idx]
        # a reconstructed CT never has one-voxel steps of 1200 HU: blur by the scanner's point spread
        return gaussian_filter(hu, CT_PSF_SIGMA).astype(np.float32)
    shaded = out * (1.0 + 0.15 * bias) * (1.0 + 0.02 * texture)
    shaded[radius >= 1.0] = 0.0
    return np.clip(shaded, 0.0, None).astype(np.float32)


def phantom_affine(shape: tuple[int, int, int], spacing: float = 2.0) -> np.ndarray:
    """A RAS affine with isotropic ``spacing`` mm voxels, centred on the origin."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2.0
    return affine
