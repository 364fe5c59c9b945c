"""Image-quality measures for denoised scans: PSNR, SSIM, masks and no-reference measures.

Conventions (see ``docs/evaluation.md``):

* **PSNR** (dB) = ``10 log10(R^2 / MSE)``, the mean squared error taken over the mask's voxels only,
  ``R`` the data range (peak) in the scan's units. BrainWeb convention for MR: the clean volume is
  scaled to [0, 1] and ``R = 1``; CT convention: both scans clipped to the HU window [-1000, 1000]
  and ``R = 2000``.
* **SSIM** (unitless, <= 1): the SSIM map of ``skimage.metrics.structural_similarity`` with its
  defaults (7-voxel uniform window, K1 = 0.01, K2 = 0.03, sample covariance) and an explicit data
  range, computed on the mask's bounding box and averaged over the mask's voxels only, because a
  whole-box average rewards flattening the background.
* **MONAI SSIM** (optional, labelled ``ssim_monai``): MONAI's Gaussian window (11 voxels, sigma 1.5),
  same averaging. It differs from the uniform-window number on the same pair: always say which.

Arrays are NumPy ``(X, Y, Z)`` (or ``(C, X, Y, Z)`` for :func:`psnr`); masks are boolean ``(X, Y, Z)``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from medidiff.errors import MedidiffError
from medidiff.volume import Volume

GEOMETRY_TOLERANCE = 1e-3
"""Largest allowed absolute difference between two affines' entries (mm) for "same grid"."""
CT_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
"""Default CT metric window in HU (data range 2000)."""
MR_THRESHOLD_FRACTION = 0.1
"""MR auto mask: voxels above this fraction of the reference's 99th percentile."""
MR_THRESHOLD_PERCENTILE = 99.0
CT_BODY_THRESHOLD_HU = -500.0
"""CT auto mask: body = voxels above this HU value (air and lung are below, soft tissue above)."""
SSIM_WINDOW = 7
"""scikit-image's default SSIM window (voxels per side, uniform weights)."""
MONAI_SSIM_WINDOW = 11
MONAI_SSIM_SIGMA = 1.5
STRUCTURE_SIGMAS: tuple[float, float] = (1.0, 3.0)
"""Difference-of-Gaussians scales (voxels) of the "structure" image in :func:`residual_measures`."""

MaskRule = Literal["MR", "CT"]


# ---------------------------------------------------------------- geometry


def check_geometry(reference: Volume, other: Volume, name: str = "input") -> None:
    """Raise if ``other`` is not on the same voxel grid as ``reference``.

    Args:
        reference: the reference scan.
        other: the scan compared with it (a test scan, a mask...).
        name: how to call ``other`` in the message.

    Raises:
        MedidiffError: the spatial shapes differ, or an affine entry differs by more than
            :data:`GEOMETRY_TOLERANCE` (mm).
    """
    label = f"{name} {other.meta.source_path}".strip() if other.meta.source_path else name
    if other.spatial_shape != reference.spatial_shape:
        raise MedidiffError(
            f"{label}: shape {other.spatial_shape} differs from the reference's {reference.spatial_shape}; "
            "resample it onto the reference grid first"
        )
    diff = float(np.max(np.abs(np.asarray(other.meta.affine) - np.asarray(reference.meta.affine))))
    if diff > GEOMETRY_TOLERANCE:
        raise MedidiffError(
            f"{label}: affine differs from the reference's by {diff:.4g} mm (> {GEOMETRY_TOLERANCE}); "
            "resample it onto the reference grid first"
        )


def axial_axis(affine: np.ndarray) -> int:
    """The array axis most aligned with the world superior-inferior axis (the slice axis of an axial scan)."""
    directions = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    directions = directions / np.maximum(directions.sum(axis=0, keepdims=True), 1e-12)
    return int(np.argmax(directions[2]))


# ---------------------------------------------------------------- masks and windows


def apply_window(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Clip ``image`` to ``[lo, hi]`` (its own units); returned unchanged when ``window`` is None."""
    if window is None:
        return image
    lo, hi = window
    if not hi > lo:
        raise MedidiffError(f"window {lo},{hi}: HI must be above LO; e.g. --window=-1000,1000")
    return np.clip(image, lo, hi)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _closing(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary closing that does not erode voxels touching the array border (the array is padded first)."""
    from scipy import ndimage

    if iterations <= 0:
        return mask
    padded = np.pad(mask, iterations + 1)
    closed = ndimage.binary_closing(padded, iterations=iterations)
    inner = tuple(slice(iterations + 1, -(iterations + 1)) for _ in range(mask.ndim))
    return closed[inner] | mask


def _convex_hull_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    from skimage.morphology import convex_hull_image

    moved = np.moveaxis(mask, axis, 0)
    hulls = np.zeros_like(moved)
    for index, plane in enumerate(moved):
        if plane.sum() >= 3:
            try:
                hulls[index] = convex_hull_image(plane)
            except ValueError:  # collinear points: no 2D hull
                hulls[index] = plane
    return np.moveaxis(hulls, 0, axis) | mask


def foreground_mask(
    reference: np.ndarray,
    modality: MaskRule = "MR",
    *,
    smooth: float = 0.0,
    slice_axis: int | None = None,
    noise_floor: float = 0.0,
) -> np.ndarray:
    """The automatic foreground mask (``--mask auto``).

    MR: voxels above ``0.1 x`` the 99th percentile of the reference (or above ``noise_floor`` when
    that is higher), the largest 6-connected component, a binary closing (2 iterations,
    6-neighbourhood) and 3D hole filling.

    CT (body mask): voxels above -500 HU, the largest 6-connected component, a closing (1 iteration),
    3D hole filling, and then the convex hull of the mask in every axial slice (perpendicular to
    ``slice_axis``), so that lungs and airways, also where a crop cuts them open at the box faces,
    count as body.

    Args:
        reference: (X, Y, Z) clean scan (MR in any units, CT in HU).
        modality: which rule.
        smooth: Gaussian sigma in voxels applied before thresholding (use about 1 for noisy scans).
        slice_axis: CT only, the axial slice axis (default 2, the last array axis; use
            :func:`axial_axis` of the scan's affine).
        noise_floor: MR only, a lowest threshold: on a noisy scan, a few times its noise sigma keeps
            the Rician (Rayleigh) background, whose mean is 1.25 sigma, out of the mask.

    Returns:
        Boolean (X, Y, Z) mask.

    Raises:
        MedidiffError: the rule selects no voxel.
    """
    from scipy import ndimage

    image = np.nan_to_num(np.asarray(reference, dtype=np.float32))
    if image.ndim != 3:
        raise ValueError(f"foreground_mask expects a 3D array, got shape {image.shape}")
    if smooth > 0:
        image = ndimage.gaussian_filter(image, smooth)
    if modality == "CT":
        mask = _largest_component(image > CT_BODY_THRESHOLD_HU)
        mask = ndimage.binary_fill_holes(_closing(mask, 1))
        mask = _convex_hull_slices(mask, 2 if slice_axis is None else slice_axis)
    elif modality == "MR":
        threshold = MR_THRESHOLD_FRACTION * float(np.percentile(image, MR_THRESHOLD_PERCENTILE))
        if threshold <= 0:
            raise MedidiffError(
                "automatic MR mask: the reference's 99th percentile is <= 0; pass --mask FILE or --mask none"
            )
        mask = _largest_component(image > max(threshold, noise_floor))
        mask = ndimage.binary_fill_holes(_closing(mask, 2))
    else:
        raise ValueError(f"unknown modality {modality!r}; use 'MR' or 'CT'")
    if not mask.any():
        raise MedidiffError("automatic mask is empty; pass --mask FILE or --mask none")
    return np.asarray(mask, dtype=bool)


def background_mask(
    image: np.ndarray, modality: MaskRule = "MR", foreground: np.ndarray | None = None, margin: int = 3
) -> np.ndarray:
    """Voxels well outside the foreground: the complement of the foreground dilated by ``margin`` voxels.

    The foreground defaults to :func:`foreground_mask` of ``image`` smoothed by 1 voxel. For CT,
    voxels equal to the image minimum are also left out when they are at least 1 % of the
    background (a constant fill outside the reconstruction circle carries no noise).
    """
    from scipy import ndimage

    if foreground is None:
        foreground = foreground_mask(image, modality, smooth=1.0)
    background = ~ndimage.binary_dilation(foreground, iterations=margin) if margin > 0 else ~foreground
    if modality == "CT":
        at_min = image == image.min()
        if (at_min & background).sum() >= 0.01 * max(int(background.sum()), 1):
            background &= ~at_min
    return background


def default_data_range(reference: np.ndarray, window: tuple[float, float] | None = None) -> tuple[float, str]:
    """The peak ``R`` used when none is given, and where it came from.

    With a window (always for CT) ``R = hi - lo`` (2000 for [-1000, 1000]); without one,
    ``R = max - min`` of the reference over the whole volume (1 for a reference scaled to [0, 1],
    the BrainWeb convention).
    """
    if window is not None:
        return float(window[1] - window[0]), f"window width {window[1]:g} - ({window[0]:g})"
    lo, hi = float(np.nanmin(reference)), float(np.nanmax(reference))
    if not hi > lo:
        raise MedidiffError("the reference is constant, so it has no data range; pass --data-range R")
    return hi - lo, "reference max - min"


# ---------------------------------------------------------------- full-reference measures


def _check_pair(reference: np.ndarray, test: np.ndarray, data_range: float) -> None:
    if reference.shape != test.shape:
        raise ValueError(f"reference shape {reference.shape} differs from test shape {test.shape}")
    if not (data_range > 0 and math.isfinite(data_range)):
        raise MedidiffError(f"data range {data_range}: must be a positive number; e.g. --data-range 1")


def _full_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape[-3:], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape[-3:]):
        raise ValueError(f"mask shape {mask.shape} differs from the image's {tuple(shape[-3:])}")
    if not mask.any():
        raise MedidiffError("the mask is empty; pass a mask with at least one voxel or --mask none")
    return mask


def psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over the mask's voxels.

    ``10 log10(R^2 / MSE)`` with ``MSE`` the mean of ``(reference - test)^2`` over the voxels where
    ``mask`` is True (all voxels when None); for ``(C, X, Y, Z)`` arrays the 3D mask applies to
    every volume and the MSE is pooled over all of them. Computed in float64.

    Args:
        reference: clean scan, any units.
        test: scan to score, same shape and units.
        mask: boolean (X, Y, Z) or None.
        data_range: the peak ``R`` in the same units (1 for [0, 1] MR, 2000 for the CT window).

    Returns:
        PSNR in dB (``inf`` when the scans are equal over the mask).
    """
    _check_pair(np.asarray(reference), np.asarray(test), data_range)
    m = _full_mask(mask, np.shape(reference))
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.ndim == 4:
        diff = (ref - tst)[:, m]
    else:
        diff = (ref - tst)[m]
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def mask_box(mask: np.ndarray, min_size: int = 1, margin: int = 0) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels per side and to at least ``min_size`` per axis.

    The box stays inside the array; it is grown symmetrically where there is room.
    """
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo, hi = int(hits[0]) - margin, int(hits[-1]) + 1 + margin
        size = mask.shape[axis]
        lo, hi = max(lo, 0), min(hi, size)
        while hi - lo < min(min_size, size):
            if lo > 0:
                lo -= 1
            if hi - lo < min_size and hi < size:
                hi += 1
        box.append(slice(lo, hi))
    return tuple(box)


def ssim(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, data_range: float) -> float:
    """Structural similarity averaged over the mask's voxels (scikit-image window).

    The SSIM map is ``skimage.metrics.structural_similarity(ref_box, test_box, data_range=R,
    full=True)`` with scikit-image's defaults (7-voxel uniform window, K1 = 0.01, K2 = 0.03, sample
    covariance, reflected borders) on the bounding box of the mask (grown to at least 7 voxels per
    axis), in float64; the result is the mean of that map over the mask's voxels.

    Args:
        reference: (X, Y, Z) clean scan.
        test: (X, Y, Z) scan to score, same units.
        mask: boolean (X, Y, Z) or None for the whole volume.
        data_range: the peak ``R`` in the scans' units.

    Returns:
        Mean SSIM over the mask (unitless, at most 1).
    """
    m = _full_mask(mask, np.shape(reference))
    box, smap = ssim_map(reference, test, m, data_range=data_range)
    return float(np.mean(smap[m[box]]))


def ssim_map(
    reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, data_range: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The SSIM map that :func:`ssim` averages: the mask's bounding box and the map over that box.

    For SSIM over parts of the mask (regions, bins) with the same conventions as :func:`ssim`.
    """
    from skimage.metrics import structural_similarity

    _check_pair(np.asarray(reference), np.asarray(test), data_range)
    if np.ndim(reference) != 3:
        raise ValueError(f"ssim expects 3D arrays, got shape {np.shape(reference)}")
    m = _full_mask(mask, np.shape(reference))
    if min(m.shape) < SSIM_WINDOW:
        raise MedidiffError(f"volume {m.shape} is smaller than the {SSIM_WINDOW}-voxel SSIM window")
    box = mask_box(m, min_size=SSIM_WINDOW)
    ref = np.asarray(reference, dtype=np.float64)[box]
    tst = np.asarray(test, dtype=np.float64)[box]
    _, smap = structural_similarity(ref, tst, data_range=float(data_range), full=True)
    return box, smap


def ssim_monai(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None, *, data_range: float) -> float:
    """Structural similarity with MONAI's Gaussian window, averaged over the mask's voxels.

    Uses ``monai.metrics.regression.compute_ssim_and_cs`` (the function behind ``SSIMMetric``) with
    ``spatial_dims=3``, an 11-voxel Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 and the explicit
    data range, on the mask's bounding box grown by 5 voxels. MONAI's map covers only voxels at
    least 5 voxels inside the box (valid convolution), so mask voxels closer than that to the volume
    edge are left out of the mean. With no mask it equals ``SSIMMetric(3, data_range=R)``.
    """
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    _check_pair(np.asarray(reference), np.asarray(test), data_range)
    if np.ndim(reference) != 3:
        raise ValueError(f"ssim_monai expects 3D arrays, got shape {np.shape(reference)}")
    m = _full_mask(mask, np.shape(reference))
    half = MONAI_SSIM_WINDOW // 2
    if min(m.shape) < MONAI_SSIM_WINDOW:
        raise MedidiffError(f"volume {m.shape} is smaller than MONAI's {MONAI_SSIM_WINDOW}-voxel SSIM window")
    box = mask_box(m, min_size=MONAI_SSIM_WINDOW, margin=half)
    ref = torch.from_numpy(np.ascontiguousarray(reference[box], dtype=np.float32))[None, None]
    tst = torch.from_numpy(np.ascontiguousarray(test[box], dtype=np.float32))[None, None]
    with torch.no_grad():
        smap, _ = compute_ssim_and_cs(
            y_pred=tst,
            y=ref,
            spatial_dims=3,
            kernel_size=[MONAI_SSIM_WINDOW] * 3,
            kernel_sigma=[MONAI_SSIM_SIGMA] * 3,
            data_range=float(data_range),
            kernel_type="gaussian",
        )
    inner = m[box][half:-half, half:-half, half:-half]
    if not inner.any():
        raise MedidiffError(f"no mask voxel lies {half} voxels inside the volume edge, as MONAI's SSIM needs")
    return float(smap[0, 0].double().numpy()[inner].mean())


# ---------------------------------------------------------------- no-reference measures


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / denom) if denom > 0 else math.nan


def background_noise(image: np.ndarray, background: np.ndarray, modality: MaskRule = "MR") -> dict[str, Any]:
    """Noise measured in a background mask, in the image's units.

    Returns ``background_std`` (standard deviation), ``background_mean`` and ``background_voxels``;
    for MR also ``background_sigma_rayleigh = sqrt(mean(x^2) / 2)``, the Gaussian sigma of the
    complex noise when the background is pure Rician (Rayleigh) noise, whose own std is only
    0.655 sigma.
    """
    values = np.asarray(image, dtype=np.float64)[background]
    out: dict[str, Any] = {"background_voxels": int(values.size)}
    if values.size == 0:
        out.update(background_std=math.nan, background_mean=math.nan)
        return out
    out["background_std"] = float(values.std())
    out["background_mean"] = float(values.mean())
    if modality == "MR":
        out["background_sigma_rayleigh"] = float(math.sqrt(float(np.mean(values * values)) / 2.0))
    return out


def _hollow_dog(image: np.ndarray, sigmas: tuple[float, float]) -> np.ndarray:
    """Difference of Gaussians without the centre voxel's own contribution (so white noise at a voxel
    is uncorrelated with the structure value at that voxel)."""
    from scipy import ndimage

    out = np.zeros_like(image, dtype=np.float32)
    centre = 0.0
    for sign, s in zip((1.0, -1.0), sigmas, strict=True):
        out += sign * ndimage.gaussian_filter(image.astype(np.float32), s)
        radius = int(4.0 * s + 0.5)
        delta = np.zeros(2 * radius + 1)
        delta[radius] = 1.0
        centre += sign * float(ndimage.gaussian_filter1d(delta, s)[radius]) ** image.ndim
    return out - np.float32(centre) * image.astype(np.float32)


def residual_measures(noisy: np.ndarray, denoised: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Does the residual ``noisy - denoised`` look like noise, or does it carry anatomy?

    Over the mask's voxels:

    * ``residual_mean``, ``residual_std``: in image units (a non-zero mean is an intensity bias).
    * ``residual_corr_output``: Pearson correlation of the residual with the denoised image.
    * ``residual_corr_structure``: Pearson correlation of the residual with the structure of the
      noisy input, a difference of Gaussians (sigmas 1 and 3 voxels) with the centre voxel's own
      weight removed, so that white noise alone gives about 0. A denoiser that removes edges and
      small anatomy leaves them in the residual, which raises this number.

    Both correlations are near 0 for a residual that is pure white noise; correlated noise (CT) and
    any real denoiser give small non-zero values, so compare methods on the same scan.
    """
    y = np.asarray(noisy, dtype=np.float32)
    d = np.asarray(denoised, dtype=np.float32)
    residual = (y - d)[mask]
    structure = _hollow_dog(y, STRUCTURE_SIGMAS)[mask]
    return {
        "residual_mean": float(residual.mean(dtype=np.float64)),
        "residual_std": float(residual.std(dtype=np.float64)),
        "residual_corr_output": _pearson(residual, d[mask]),
        "residual_corr_structure": _pearson(residual, structure),
    }


def contrast_measures(image: np.ndarray, roi_a: np.ndarray, roi_b: np.ndarray) -> dict[str, float]:
    """Contrast and contrast-to-noise ratio between two regions.

    ``contrast = mean_a - mean_b`` (image units) and
    ``cnr = |mean_a - mean_b| / sqrt((var_a + var_b) / 2)`` (unitless, pooled noise of both regions).
    """
    a = np.asarray(image, dtype=np.float64)[np.asarray(roi_a, dtype=bool)]
    b = np.asarray(image, dtype=np.float64)[np.asarray(roi_b, dtype=bool)]
    if a.size == 0 or b.size == 0:
        raise MedidiffError("an ROI mask is empty; give two masks with voxels inside the scan")
    pooled = math.sqrt((float(a.var()) + float(b.var())) / 2.0)
    contrast = float(a.mean() - b.mean())
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "contrast": contrast,
        "cnr": abs(contrast) / pooled if pooled > 0 else math.inf,
    }
