"""Zero-filled regions for training patches: skull-stripped, defaced and cropped scans.

Many research scans reach a denoiser with part of the volume set to exactly zero: a brain
extraction mask (the Colin27 template, most preprocessed datasets), defacing, or the corners
outside a reconstruction's field of view. The noise of the magnitude image is added after the
mask, so the zeroed region holds pure background noise (Rayleigh for Rician MR) beside tissue
that ends at a hard edge. Whole-head training scans never show that, and a model trained only
on them leaves the Rayleigh floor in the zeroed region and blurs the edge.

:func:`zero_outside_mask` zeroes a clean patch outside a random mask drawn from ``rng``, of one of
two kinds:

* ``anatomy``: the patch smoothed with a Gaussian (1-3 voxels) above a random quantile
  (15-60 %), holes filled: an edge that follows tissue contours and cuts through dark CSF and
  sulci the way a brain mask does.
* ``plane``: one side of a random plane through the patch (defacing, field-of-view limits).

Zero is the normalized value of no signal (MR) and of -1000 HU, air (CT).
"""

from __future__ import annotations

import numpy as np

ANATOMY_SHARE = 0.7


def random_mask(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``patch``'s spatial shape (the last three axes): True where tissue stays."""
    from scipy import ndimage

    spatial = np.asarray(patch if patch.ndim == 3 else patch[0], dtype=np.float32)
    if rng.random() < ANATOMY_SHARE:
        smooth = ndimage.gaussian_filter(spatial, sigma=rng.uniform(1.0, 3.0))
        keep = smooth > np.quantile(smooth, rng.uniform(0.15, 0.6))
        return np.asarray(ndimage.binary_fill_holes(keep), dtype=bool)
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal) + 1e-12
    shape = np.array(spatial.shape, dtype=np.float64)
    point = shape * rng.uniform(0.25, 0.75, size=3)
    grid = np.indices(spatial.shape, dtype=np.float64).reshape(3, -1).T
    return ((grid - point) @ normal > 0).reshape(spatial.shape)


def zero_outside_mask(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``patch`` ((X, Y, Z) or (C, X, Y, Z)) with every voxel outside :func:`random_mask` set to 0."""
    mask = random_mask(patch, rng)
    return np.where(mask, patch, np.zeros((), dtype=patch.dtype)).astype(patch.dtype, copy=False)
