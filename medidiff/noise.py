"""Noise models of real scans and noise-level estimation.

* MR magnitude images: Rician (one coil) or non-central chi (``n_coils`` > 1) noise, simulated as the
  magnitude of complex Gaussian noise, never as additive Gaussian noise on the magnitude.
* CT: after filtered back projection the noise is correlated in-plane with a ramp-shaped power
  spectrum. :func:`add_ct_noise` approximates that texture by filtering white noise with a windowed
  ramp in the axial plane (fast enough for training patches); the benchmark uses the slower,
  projection-domain simulation in :mod:`medidiff.ct_dose`.
* :func:`estimate_sigma`: the noise standard deviation of a scan, from a wavelet detail band over
  the high-signal foreground (where Rician noise is close to Gaussian), refined with a robust
  flat-region estimate. Its error on known noise is measured in the tests and the benchmark.

Every random function takes a ``torch.Generator`` (or a NumPy ``Generator``) so runs can be replayed.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

NoiseKind = Literal["rician", "gaussian", "ct"]


def add_rician(
    x0: torch.Tensor, sigma: torch.Tensor | float, generator: torch.Generator | None = None, n_coils: int = 1
) -> torch.Tensor:
    """Magnitude of ``x0`` plus complex Gaussian noise of std ``sigma`` per component.

    With ``n_coils`` > 1 the result is non-central chi distributed (root sum of squares over coils,
    the signal in the first). ``sigma`` broadcasts against ``x0`` (e.g. shape (B, 1, 1, 1, 1)).
    """
    sigma_t = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    real = x0 + sigma_t * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    power = (
        real**2
        + (sigma_t * torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)) ** 2
    )
    for _ in range(n_coils - 1):
        for _part in range(2):
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            power = power + (sigma_t * noise) ** 2
    return torch.sqrt(power)


def add_rician_numpy(x0: np.ndarray, sigma: float, rng: np.random.Generator, n_coils: int = 1) -> np.ndarray:
    """NumPy twin of :func:`add_rician` for whole volumes (benchmark, tests)."""
    x0 = np.asarray(x0, dtype=np.float64)
    power = (x0 + sigma * rng.standard_normal(x0.shape)) ** 2 + (sigma * rng.standard_normal(x0.shape)) ** 2
    for _ in range(2 * (n_coils - 1)):
        power += (sigma * rng.standard_normal(x0.shape)) ** 2
    return np.sqrt(power).astype(np.float32)


def _ramp_filter(
    shape: tuple[int, int], device: torch.device, smoothness: float = 1.0, ramp: float = 1.0
) -> torch.Tensor:
    """Amplitude filter whose power spectrum is |f|^``ramp`` times a Hann window to the power ``smoothness``.

    With ``ramp`` 1 that is the shape of FBP noise: a ramp (no power at zero frequency) apodized by
    the reconstruction kernel; ``smoothness`` 0 is a sharp (pure ramp) kernel, 2 a soft one. Lower
    ``ramp`` moves power to low frequencies: 0 with ``smoothness`` 0 is white noise (in-plane), 0
    with a soft kernel the coarse, blotchy grain of iteratively reconstructed or resampled scans.
    """
    fx = torch.fft.fftfreq(shape[0], device=device)[:, None]
    fy = torch.fft.fftfreq(shape[1], device=device)[None, :]
    radius = torch.sqrt(fx**2 + fy**2) / 0.5  # 1.0 at the Nyquist frequency along an axis
    window = torch.where(radius < 1.0, 0.5 * (1.0 + torch.cos(math.pi * radius)), torch.zeros_like(radius))
    return torch.sqrt(radius**ramp * window**smoothness + 1e-12)


def add_ct_noise(
    x0: torch.Tensor,
    sigma: torch.Tensor | float,
    generator: torch.Generator | None = None,
    smoothness: float | None = None,
    ramp: float | tuple[float, float] = 1.0,
) -> torch.Tensor:
    """``x0`` plus in-plane correlated noise of pixel std ``sigma`` (FBP-like texture).

    ``x0`` is (..., X, Y, Z) with axial slices in the (X, Y) plane, as in CT scans stored axially.
    ``smoothness`` sets the reconstruction kernel (see :func:`_ramp_filter`); None draws it
    uniformly from [0, 2] (per sample for a 5D batch) so a model trained on it meets sharp and soft
    kernels alike. ``ramp`` is the exponent of the ramp (1: FBP); a pair (lo, hi) draws it
    uniformly per sample, after the kernel.
    """
    if smoothness is None and x0.ndim == 5:  # a batch (B, C, X, Y, Z): one kernel per sample
        sig = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).expand(x0.shape[0], *([1] * 4))
        return torch.stack([add_ct_noise(x0[i], sig[i], generator, ramp=ramp) for i in range(x0.shape[0])])
    white = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
    if smoothness is None:
        smoothness = 2.0 * float(torch.rand((), generator=generator, device=x0.device))
    if not isinstance(ramp, int | float):
        lo, hi = ramp
        ramp = lo + (hi - lo) * float(torch.rand((), generator=generator, device=x0.device)) if hi > lo else lo
    plane = white.movedim(-1, -3)  # (..., Z, X, Y)
    filt = _ramp_filter((plane.shape[-2], plane.shape[-1]), x0.device, smoothness, float(ramp))
    shaped = torch.fft.ifft2(torch.fft.fft2(plane) * filt).real
    shaped = shaped / shaped.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    noise = shaped.movedim(-3, -1).to(x0.dtype)
    return x0 + torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device) * noise


def add_noise(
    x0: torch.Tensor,
    sigma: torch.Tensor | float,
    kind: NoiseKind,
    generator: torch.Generator | None = None,
    ct_ramp: float | tuple[float, float] = 1.0,
) -> torch.Tensor:
    """Dispatch to the noise model ``kind`` (``rician``, ``gaussian`` or ``ct``).

    ``ct_ramp``: the ramp exponent of CT noise, a value or a (lo, hi) range (:func:`add_ct_noise`).
    """
    if kind == "rician":
        return add_rician(x0, sigma, generator)
    if kind == "ct":
        return add_ct_noise(x0, sigma, generator, ramp=ct_ramp)
    if kind == "gaussian":
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return x0 + torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device) * noise
    raise ValueError(f"unknown noise kind {kind!r}; use 'rician', 'gaussian' or 'ct'")


RECORRUPT_MARGIN = 1.25
"""Training levels below this multiple of a scan's own noise are raised to it (the target noise
variance grows as the added noise shrinks: ``own**2 * sigma**2 / (sigma**2 - own**2)``)."""


def recorrupt(
    y: torch.Tensor,
    own_sigma: torch.Tensor,
    sigma: torch.Tensor,
    rician: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recorrupted-to-Recorrupted training pairs from patches that carry noise of their own.

    ``y`` (B, 1, X, Y, Z) holds scans with white noise of std ``own_sigma`` (B,). For a training
    level ``sigma`` (B,), raised to at least ``RECORRUPT_MARGIN * own_sigma``, the input gets extra
    noise ``e * z`` with ``e = sqrt(sigma**2 - own**2)`` and the target is ``y - (own**2 / e) * z``:
    the input's total noise has std ``sigma`` and is uncorrelated with the target's, so the expected
    MSE to the target equals the MSE to the clean scan plus a constant (Pang et al., CVPR 2021).
    ``rician`` (B,) bool takes the magnitude with a second, imaginary noise component, as MR does.

    Returns:
        (noisy input, target, the levels actually used).
    """
    own = own_sigma.to(y.dtype)
    level = torch.maximum(sigma.to(y.dtype), RECORRUPT_MARGIN * own)
    extra = torch.sqrt(level**2 - own**2).view(-1, 1, 1, 1, 1)
    back = own.view(-1, 1, 1, 1, 1) ** 2 / extra.clamp_min(1e-12)  # 0 for clean patches (own = 0)
    z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    imaginary = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    real = y + extra * z
    magnitude = torch.sqrt(real**2 + (extra * imaginary) ** 2)
    noisy = torch.where(rician.view(-1, 1, 1, 1, 1), magnitude, real)
    return noisy, y - back * z, level


# ---------------------------------------------------------------- estimation

_MAD_TO_STD = 1.0 / 0.6744897501960817


def _haar_hhh(x: np.ndarray) -> np.ndarray:
    """The finest diagonal 3D Haar detail band: white noise of std s maps to std s, smooth structure to ~0."""
    sx, sy, sz = (d - d % 2 for d in x.shape)
    v = x[:sx, :sy, :sz]
    a = v[0::2] - v[1::2]
    b = a[:, 0::2] - a[:, 1::2]
    c = b[:, :, 0::2] - b[:, :, 1::2]
    return c / math.sqrt(8.0)


def _local_std(x: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    mean = uniform_filter(x, size)
    var = uniform_filter(x * x, size) - mean * mean
    return np.sqrt(np.clip(var, 0.0, None) * (size**3) / (size**3 - 1))


def estimate_sigma(data: np.ndarray, modality: Literal["MR", "CT"] | None = None) -> float:
    """Estimate the noise standard deviation of a 3D scan, in the units of ``data``.

    MR: the median absolute deviation of the finest 3D Haar detail band, over 2x2x2 blocks whose
    mean signal is high (at least 5 times the first estimate), where Rician noise is nearly
    Gaussian, and whose smoothed gradient is below the median (edges leak structure into the
    band); the dark background (Rayleigh distributed, std 0.66 sigma) is left out so it cannot
    bias the result low.

    CT: FBP noise is correlated in-plane, which hides part of it from a one-voxel detail band, so the
    noise std is taken as the 10th percentile of the 5x5x5 local standard deviation over soft tissue
    (-300 to 300 HU after the caller's normalization is undone: ``data`` is in HU), corrected for the
    percentile's offset under Gaussian noise.

    Args:
        data: (X, Y, Z) float array.
        modality: ``"MR"``, ``"CT"`` or None (treated as MR).

    Returns:
        The estimated sigma (>= 0) in the units of ``data``.
    """
    x = np.nan_to_num(np.asarray(data, dtype=np.float32))
    if x.ndim != 3:
        raise ValueError(f"estimate_sigma expects a 3D array, got shape {x.shape}")
    if min(x.shape) < 4:
        raise ValueError(f"volume {x.shape} is too small to estimate its noise")
    if modality == "CT":
        return _estimate_ct(x)
    return _estimate_mr(x)


def _estimate_mr(x: np.ndarray) -> float:
    from scipy.ndimage import gaussian_gradient_magnitude

    hhh = _haar_hhh(x)
    sx, sy, sz = hhh.shape
    block_mean = x[: 2 * sx, : 2 * sy, : 2 * sz].reshape(sx, 2, sy, 2, sz, 2).mean(axis=(1, 3, 5))
    sigma = float(np.median(np.abs(hhh))) * _MAD_TO_STD
    floor = 1e-6 * float(np.abs(x).max() + 1e-12)
    for _ in range(3):
        mask = block_mean > 5.0 * max(sigma, floor)
        if mask.sum() < 64:
            break
        sigma = float(np.median(np.abs(hhh[mask]))) * _MAD_TO_STD
    # edges leak structure into the detail band: keep the flatter half of the bright blocks
    mask = block_mean > 5.0 * max(sigma, floor)
    if mask.sum() >= 128:
        gradient = gaussian_gradient_magnitude(block_mean, 1.0)
        flat = mask & (gradient < np.median(gradient[mask]))
        if flat.sum() >= 64:
            sigma = float(np.median(np.abs(hhh[flat]))) * _MAD_TO_STD
    return max(sigma, 0.0)


def _estimate_ct(x: np.ndarray) -> float:
    soft = (x > -300) & (x < 300)
    if soft.sum() < 1000:
        soft = np.ones_like(x, dtype=bool)
    local = _local_std(x, 5)[soft]
    # under pure noise the 10th percentile of a 125-voxel std is about 0.89 sigma; measured on
    # correlated CT-like noise (see tests/test_noise.py) the same ratio holds to a few percent
    return float(np.percentile(local, 10.0)) / 0.89
