"""Projection-domain low-dose CT simulation, slice by slice.

Each axial slice goes through a simplified monoenergetic scanner (parallel-beam geometry):

1. HU -> linear attenuation: ``mu = MU_WATER_PER_MM * (1 + HU / 1000)`` per mm, clipped at 0
   (air and anything below it attenuates nothing). ``MU_WATER_PER_MM = 0.0192`` is water at an
   effective energy of about 70 keV.
2. The slice is padded with air to a square whose inscribed circle contains the whole slice, so the
   Radon transform (``skimage.transform.radon``, ``circle=True``) sees every voxel.
3. Line integrals ``p = radon(mu) * pixel_mm`` (dimensionless), pixel size = the mean in-plane spacing.
4. Detector counts ``I ~ Poisson(I0 * exp(-p))``, ``I0`` incident photons per ray; zero counts are
   set to 0.5 so the logarithm exists (photon starvation).
5. ``p_noisy = -log(I / I0)``; filtered back projection (``iradon``, ramp or Hann filter) of the
   *difference* ``p_noisy - p`` gives the noise image in mu, converted to HU with ``1000 / mu_water``.
6. The noisy slice is the original slice plus that noise image. Because FBP is linear,
   ``FBP(p_noisy - p)`` equals ``FBP(p_noisy) - FBP(p)``: the noiseless sinogram reconstructed with
   the same FBP is subtracted, so discretisation and view-sampling errors of FBP cancel and the only
   change to the original slice is the noise (correlated, streaky and non-stationary, like real
   low-dose CT noise).

``I0`` can be given directly or calibrated by :func:`calibrate_i0` so that the noise std over soft
tissue (-300 to 300 HU in the clean scan) is about a target in HU. Noise std scales as ``1/sqrt(I0)``.
Electronic noise, beam hardening and the scanner's real fan/cone geometry are not modelled.
Every random draw comes from a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medidiff.errors import MedidiffError

MU_WATER_PER_MM = 0.0192
"""Linear attenuation of water per mm at an effective energy of about 70 keV."""
SOFT_TISSUE_HU: tuple[float, float] = (-300.0, 300.0)
"""Range of clean HU values where the noise level is measured (as in ``medidiff.noise``)."""
DEFAULT_ANGLES = 360
FilterName = Literal["ramp", "hann"]


@dataclass(frozen=True)
class LowDoseResult:
    """A simulated low-dose volume.

    Attributes:
        noisy: (X, Y, Z) float32 HU, the original plus the simulated noise.
        i0: incident photons per ray used.
        noise_std_hu: std of the added noise over soft tissue (clean HU in [-300, 300], within the
            measuring mask if one was given); NaN if no such voxel.
        noise_mean_hu: mean of the added noise over the same voxels (close to 0).
    """

    noisy: np.ndarray
    i0: float
    noise_std_hu: float
    noise_mean_hu: float


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Linear attenuation per mm from Hounsfield units: ``mu_water * (1 + HU / 1000)``, at least 0."""
    return np.clip(mu_water * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0, None)


def _square_pad(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad with zeros to a square whose inscribed circle contains the whole image."""
    rows, cols = image.shape
    side = int(math.ceil(math.hypot(rows, cols))) + 2
    top, left = (side - rows) // 2, (side - cols) // 2
    padded = np.zeros((side, side), dtype=np.float64)
    padded[top : top + rows, left : left + cols] = image
    return padded, (slice(top, top + rows), slice(left, left + cols))


def _angles(n_angles: int) -> np.ndarray:
    if n_angles < 2:
        raise MedidiffError(f"n_angles {n_angles}: need at least 2 projection angles; e.g. 360")
    return np.linspace(0.0, 180.0, n_angles, endpoint=False)


def slice_noise(
    slice_hu: np.ndarray,
    pixel_mm: float,
    i0: float,
    rng: np.random.Generator,
    n_angles: int = DEFAULT_ANGLES,
    filter_name: FilterName = "ramp",
    mu_water: float = MU_WATER_PER_MM,
) -> np.ndarray:
    """The low-dose noise image (HU) of one 2D slice: ``FBP(p_noisy) - FBP(p_clean)`` in HU.

    Args:
        slice_hu: (rows, cols) clean slice in HU.
        pixel_mm: in-plane pixel size in mm.
        i0: incident photons per ray (> 0).
        rng: seeded generator for the Poisson counts.
        n_angles: projection angles over 180 degrees.
        filter_name: FBP filter, ``"ramp"`` or ``"hann"``.
        mu_water: attenuation of water per mm.

    Returns:
        (rows, cols) float32 noise in HU, to add to ``slice_hu``.
    """
    from skimage.transform import iradon, radon

    if not i0 > 0:
        raise MedidiffError(f"i0 {i0}: incident photons per ray must be > 0; e.g. 1e5")
    if filter_name not in ("ramp", "hann"):
        raise MedidiffError(f"filter {filter_name!r}: use 'ramp' or 'hann'")
    padded, inner = _square_pad(hu_to_mu(slice_hu, mu_water))
    theta = _angles(n_angles)
    line_integrals = radon(padded, theta=theta, circle=True) * pixel_mm
    counts = rng.poisson(i0 * np.exp(-line_integrals)).astype(np.float64)
    counts = np.maximum(counts, 0.5)
    noisy_integrals = -np.log(counts / i0)
    # FBP is linear: FBP(noisy) - FBP(clean) = FBP(noisy - clean); one reconstruction suffices
    delta_mu = iradon(
        (noisy_integrals - line_integrals) / pixel_mm,
        theta=theta,
        output_size=padded.shape[0],
        filter_name=filter_name,
        circle=True,
    )
    return (delta_mu[inner] * (1000.0 / mu_water)).astype(np.float32)


def _soft_tissue_stats(noise: np.ndarray, clean: np.ndarray, region: np.ndarray | None = None) -> tuple[float, float]:
    soft = (clean >= SOFT_TISSUE_HU[0]) & (clean <= SOFT_TISSUE_HU[1])
    if region is not None:
        soft &= region
    if not soft.any():
        return math.nan, math.nan
    values = noise[soft].astype(np.float64)
    return float(values.std()), float(values.mean())


def _slice_view(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(volume, axis, 0)


def calibrate_i0(
    volume_hu: np.ndarray,
    target_std_hu: float,
    pixel_mm: float,
    rng: np.random.Generator,
    axis: int = 2,
    n_angles: int = DEFAULT_ANGLES,
    filter_name: FilterName = "ramp",
    n_slices: int = 3,
    mu_water: float = MU_WATER_PER_MM,
    measure_mask: np.ndarray | None = None,
) -> float:
    """Incident photons per ray that give about ``target_std_hu`` of noise over soft tissue.

    Simulates ``n_slices`` evenly spaced slices at a trial ``I0`` of 1e5, measures the noise std
    over soft tissue (within ``measure_mask`` when given, same shape as ``volume_hu``) and rescales
    ``I0`` by ``(measured / target)^2`` (noise std goes as ``1/sqrt(I0)``); a second pass at the new
    ``I0`` refines it.

    Raises:
        MedidiffError: ``target_std_hu`` is not positive, or the slices hold no soft tissue.
    """
    if not target_std_hu > 0:
        raise MedidiffError(f"target noise {target_std_hu} HU: must be > 0; e.g. 25")
    slices = _slice_view(np.asarray(volume_hu, dtype=np.float32), axis)
    region = None if measure_mask is None else _slice_view(np.asarray(measure_mask, dtype=bool), axis)
    count = slices.shape[0]
    picks = np.unique(np.linspace(count * 0.25, count * 0.75, n_slices).astype(int).clip(0, count - 1))
    i0 = 1e5
    for _ in range(2):
        noise = np.stack([slice_noise(slices[k], pixel_mm, i0, rng, n_angles, filter_name, mu_water) for k in picks])
        std, _ = _soft_tissue_stats(noise, slices[picks], None if region is None else region[picks])
        if not (std > 0 and math.isfinite(std)):
            raise MedidiffError("cannot calibrate the CT dose: the sampled slices hold no soft tissue (-300..300 HU)")
        i0 = i0 * (std / target_std_hu) ** 2
    return float(i0)


def simulate_low_dose(
    volume_hu: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    i0: float | None = None,
    target_std_hu: float | None = None,
    axis: int = 2,
    n_angles: int = DEFAULT_ANGLES,
    filter_name: FilterName = "ramp",
    mu_water: float = MU_WATER_PER_MM,
    measure_mask: np.ndarray | None = None,
) -> LowDoseResult:
    """Simulate a low-dose acquisition of a clean CT volume, slice by slice along ``axis``.

    Args:
        volume_hu: (X, Y, Z) clean volume in HU.
        spacing: voxel size in mm along the three array axes; the in-plane pixel size is the mean
            of the two axes other than ``axis``.
        rng: seeded ``numpy.random.Generator``.
        i0: incident photons per ray; or
        target_std_hu: soft-tissue noise std to reach (``I0`` from :func:`calibrate_i0`).
        axis: the slice (axial) axis, e.g. ``medidiff.metrics.axial_axis(affine)``.
        n_angles: projection angles over 180 degrees.
        filter_name: FBP filter, ``"ramp"`` or ``"hann"``.
        mu_water: attenuation of water per mm.
        measure_mask: (X, Y, Z) boolean, where the noise level is calibrated and reported (e.g. the
            region that will be evaluated); None = everywhere.

    Returns:
        :class:`LowDoseResult` with the noisy volume (original + noise only) and the noise level reached.
    """
    volume = np.asarray(volume_hu, dtype=np.float32)
    if volume.ndim != 3:
        raise MedidiffError(f"CT dose simulation needs a 3D volume, got shape {volume.shape}")
    if (i0 is None) == (target_std_hu is None):
        raise MedidiffError("give exactly one of i0 (photons per ray) or target_std_hu (noise in HU)")
    in_plane = [float(s) for k, s in enumerate(spacing) if k != axis]
    pixel_mm = float(np.mean(in_plane))
    if i0 is None:
        assert target_std_hu is not None
        i0 = calibrate_i0(
            volume, target_std_hu, pixel_mm, rng, axis, n_angles, filter_name, mu_water=mu_water,
            measure_mask=measure_mask,
        )  # fmt: skip
    slices = _slice_view(volume, axis)
    noise = np.empty_like(slices)
    for k in range(slices.shape[0]):
        noise[k] = slice_noise(slices[k], pixel_mm, i0, rng, n_angles, filter_name, mu_water)
    region = None if measure_mask is None else _slice_view(np.asarray(measure_mask, dtype=bool), axis)
    std, mean = _soft_tissue_stats(noise, slices, region)
    noisy = np.moveaxis(slices + noise, 0, axis)
    return LowDoseResult(np.ascontiguousarray(noisy, dtype=np.float32), float(i0), std, mean)
