"""Guided averaging: a second look at the noisy scan, steered by the network's estimate.

The one-step network estimate is sharp at edges but leaves residual noise in flat tissue (white
matter), where averaging many noisy voxels does better. ``guided_average`` replaces each voxel by a
weighted mean of the *noisy* voxels within a ball of radius ``r`` around it, the weight of a
neighbour falling with how far the estimate there differs from the estimate here (a joint bilateral
filter whose range kernel looks at the denoised image, in the spirit of the prefiltered non-local
means of Manjon et al. 2010). In flat tissue every neighbour counts and the noise averages away;
across an edge the estimate differs by far more than ``h`` and the other side is left out. The width
``h`` can grow with the estimate's local slope (``strength_slope``; the MR default): narrow where
the estimate is flat, whose small variations are mostly anatomy, wide on slopes and edges, where a
narrow kernel leaves too few neighbours. The estimate smooths fine texture, though, and a weight
from it alone would average that texture away too; so a second factor compares local means of the
noisy scan itself (a Gaussian of 0.75 voxels, whose own noise is a quarter of the scan's), which
still see texture of a few voxels' scale that the estimate lost. For Rician (MR magnitude) data the
mean is taken of ``y^2`` and ``2 sigma^2`` is removed before the square root, the usual bias
correction of Rician NLM.

Guided averaging leaves a little noise in the finest detail of flat tissue. ``shrink_faint_detail``,
run after it on MR, keeps that detail only in proportion to how far its local power exceeds the
noise's (a local Wiener gain), so flat tissue is smoothed and edges and texture are kept.

Neighbourhoods and Gaussians here are round in millimetres: given the scan's voxel spacing, their
sizes count voxels of the finest axis, and a coarser axis gets proportionally fewer (on a 1 x 1 x 3 mm
scan a ball of 3.7 reaches one slice up and down, not three).

Measured on the held-out Colin27 brain and on the CT scans: docs/design.md (section 4) and
docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: neighbourhood radius in voxels: a ball of 203 voxels (the MR default; CT's is in medidiff.inference)
RADIUS = 3.7
#: range-kernel width as a multiple of the noise sigma
STRENGTH = 1.0
#: Gaussian std in voxels of the estimate whose gradient steers a sloped range kernel (``strength_slope``)
SLOPE_SMOOTHING = 1.0
#: Gaussian std in voxels of the local means of the noisy scan that also steer the weights (0: off)
DATA_SMOOTHING = 0.75
#: their range-kernel width as a multiple of the local means' own noise std
DATA_WIDTH = 2.5
#: Gaussian kernel extent of the local means, in stds (scipy's default, in both places it matters)
TRUNCATE = 4.0
#: voxels along the first axis per slab (memory stays a few slabs whatever the volume)
SLAB = 24
DEVICE_SLAB = 128  # planes per slab on a GPU: fewer, larger kernels
#: detail shrinkage (``shrink_faint_detail``): the detail is what lies above a Gaussian of this many voxels
DETAIL_SMOOTHING = 0.7
#: ... and its local power is its square under a Gaussian of this many voxels
DETAIL_WINDOW = 1.5


def voxel_scale(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    """Each axis's voxel size over the finest axis's, e.g. ``(1, 1, 3)`` for a 1 x 1 x 3 mm scan.

    None, or a spacing that is not three finite positive numbers (a degenerate affine), gives ``(1, 1, 1)``.
    """
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = np.asarray(spacing, dtype=np.float64).ravel()
    if values.size != 3 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        return (1.0, 1.0, 1.0)
    rel = values / values.min()
    return (float(rel[0]), float(rel[1]), float(rel[2]))


def gaussian_taps(smoothing: float) -> np.ndarray:
    """The 1D kernel of ``scipy.ndimage.gaussian_filter(.., smoothing, truncate=TRUNCATE)``."""
    from scipy import ndimage

    n = 2 * int(np.ceil(TRUNCATE * smoothing)) + 1
    delta = np.zeros(n)
    delta[n // 2] = 1.0
    return ndimage.gaussian_filter1d(delta, smoothing, mode="constant", truncate=TRUNCATE)


def _axis_stds(smoothing: float, spacing: Sequence[float] | None) -> list[float]:
    """A Gaussian of ``smoothing`` voxels of the finest axis, as a std per axis in that axis's voxels."""
    return [smoothing / q for q in voxel_scale(spacing)]


def gaussian_smooth(x: torch.Tensor, smoothing: float, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(.., smoothing, mode="nearest", truncate=TRUNCATE)`` in torch.

    ``x``: (B, 1, X, Y, Z), each volume filtered on its own. With ``spacing`` the std is ``smoothing``
    voxels of the finest axis (:func:`voxel_scale`), fewer voxels along coarser axes.
    """
    cudnn = torch.backends.cudnn
    # full float32 on GPUs, whose convolutions may otherwise round inputs to TF32's 10-bit mantissa
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                     allow_tf32=False):
        for axis, std in enumerate(_axis_stds(smoothing, spacing)):  # separable, scipy's "nearest" borders
            taps = torch.as_tensor(gaussian_taps(std), dtype=x.dtype, device=x.device)
            half = taps.numel() // 2
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = taps.numel()
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = half
            x = torch.nn.functional.conv3d(torch.nn.functional.pad(x, pad, mode="replicate"), taps.reshape(shape))
    return x


def smooth_volume(x: torch.Tensor, smoothing: float, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """A Gaussian of ``smoothing`` voxels (of the finest axis, given ``spacing``) of the (X, Y, Z) tensor ``x``.

    On ``x``'s device: on the CPU with SciPy (torch's ``conv3d`` there unfolds the volume into a copy
    per tap), else with :func:`gaussian_smooth`; both ``mode="nearest"``, ``truncate=TRUNCATE``.
    """
    if x.device.type != "cpu":
        return gaussian_smooth(x[None, None], smoothing, spacing)[0, 0]
    from scipy import ndimage

    stds = _axis_stds(smoothing, spacing)
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), stds, mode="nearest", truncate=TRUNCATE))


def _on_device_or_cpu(run: Callable[[torch.device], np.ndarray], device: torch.device | str | None,
                      what: str) -> np.ndarray:
    """``run(device)`` (None: the CPU); out of GPU memory, ``run`` again on the CPU with a warning."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cpu":
        try:
            return run(dev)
        except torch.cuda.OutOfMemoryError:
            pass
        torch.cuda.empty_cache()  # outside the handler, so the failed call's tensors are gone
        log.warning("%s ran out of GPU memory; running it on the CPU", what)
    return run(torch.device("cpu"))


def smoothed_noise_factor(smoothing: float, spacing: Sequence[float] | None = None) -> float:
    """Std of white noise after :func:`smooth_volume` (``smoothing``, ``spacing``) in 3D, per unit of sigma."""
    return float(np.prod([np.sum(gaussian_taps(std) ** 2) ** 0.5 for std in _axis_stds(smoothing, spacing)]))


def neighbourhood(radius: float, spacing: Sequence[float] | None = None) -> list[tuple[int, int, int]]:
    """Offsets ``(i, j, k)`` of the voxels within ``radius`` of the centre (the centre included).

    With ``spacing`` the distance is in voxels of the finest axis (:func:`voxel_scale`): a ball in
    millimetres, reaching fewer voxels along coarser axes.
    """
    a, b, c = voxel_scale(spacing)
    r = int(np.floor(radius))
    span = range(-r, r + 1)
    return [(i, j, k) for i, j, k in itertools.product(span, span, span)
            if (a * i) ** 2 + (b * j) ** 2 + (c * k) ** 2 <= radius**2 + 1e-9]


def guided_average(
    noisy: np.ndarray,
    guide: np.ndarray,
    sigma: float,
    *,
    rician: bool,
    radius: float = RADIUS,
    strength: float = STRENGTH,
    data_smoothing: float = DATA_SMOOTHING,
    data_width: float = DATA_WIDTH,
    spacing: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    strength_slope: float = 0.0,
    strength_max: float | None = None,
) -> np.ndarray:
    """Weighted mean of ``noisy`` over each voxel's neighbourhood, weights from ``guide`` and local means.

    Args:
        noisy: (X, Y, Z) scan, the network's input.
        guide: (X, Y, Z) the network's estimate, same units.
        sigma: noise sigma in those units (> 0).
        rician: average ``y^2`` and remove the Rician bias ``2 sigma^2`` (MR magnitude images).
        radius: neighbourhood radius in voxels (of the finest axis, given ``spacing``), a ball; below 1
            returns ``guide``.
        strength: the range kernel's width ``h`` as a multiple of ``sigma`` (where the estimate is flat,
            when ``strength_slope`` > 0).
        data_smoothing: when > 0, local means ``m`` of the noisy scan (Gaussian, this std in voxels)
            steer the weights too: a second factor ``exp(-(m_j - m_i)^2 / (2 (c s_m)^2))``, ``s_m`` the
            means' own noise std and ``c = data_width``. It keeps texture that the estimate smoothed.
        data_width: ``c`` above.
        spacing: the voxel size along each axis (any unit); the ball and the local means' Gaussian are
            then round in those units, sized in voxels of the finest axis. None: isotropic.
        device: where the arithmetic runs (None: the CPU). On a GPU the slabs are larger and the
            local means come from the same separable filter in torch; out of GPU memory, it runs on
            the CPU instead.
        strength_slope: when > 0, each voxel's ``h`` grows with the local slope of the estimate:
            ``strength + strength_slope * t``, at most ``strength_max``, where ``t`` is the gradient
            magnitude of the estimate under a Gaussian of ``SLOPE_SMOOTHING`` voxels, per voxel of the
            finest axis, in units of ``sigma`` (:func:`slope_over_sigma`). Where the estimate is flat its
            small variations are mostly anatomy it kept, which a narrow kernel keeps too; on slopes a
            narrow kernel leaves only the few neighbours at the same level, and noise with them
            (docs/design.md, section 4, "A range kernel that widens on slopes").
        strength_max: the largest ``h`` as a multiple of ``sigma`` (None: no limit).

    Returns:
        (X, Y, Z) float32 array.
    """
    args = (noisy, guide, sigma, rician, radius, strength, data_smoothing, data_width, spacing,
            strength_slope, strength_max)
    return _on_device_or_cpu(lambda dev: _guided_average(*args, dev), device, "guided averaging")


def slope_over_sigma(guide: torch.Tensor, sigma: float, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """The gradient magnitude of ``guide`` (X, Y, Z) under a Gaussian of ``SLOPE_SMOOTHING`` voxels, over ``sigma``.

    Central differences of the smoothed estimate, per voxel of the finest axis (a coarser axis's
    difference is divided by its voxel size relative to the finest, :func:`voxel_scale`), so a
    ramp reads the same in millimetres whatever the slice thickness.
    """
    smooth = smooth_volume(guide, SLOPE_SMOOTHING, spacing)
    total = torch.zeros_like(smooth)
    for axis, q in enumerate(voxel_scale(spacing)):
        if smooth.shape[axis] < 2:
            continue
        (d,) = torch.gradient(smooth, spacing=q, dim=axis)
        total.addcmul_(d, d)
    return total.sqrt_().div_(sigma)


def _guided_average(
    noisy: np.ndarray, guide: np.ndarray, sigma: float, rician: bool, radius: float, strength: float,
    data_smoothing: float, data_width: float, spacing: Sequence[float] | None, strength_slope: float,
    strength_max: float | None, dev: torch.device,
) -> np.ndarray:
    if noisy.shape != guide.shape or noisy.ndim != 3:
        raise ValueError(f"noisy {noisy.shape} and guide {guide.shape} must be the same 3D shape")
    if radius < 1 or sigma <= 0:
        return np.asarray(guide, np.float32)
    inv_h2 = 1.0 / (strength * sigma) ** 2
    r = int(np.floor(radius))
    offsets = neighbourhood(radius, spacing)
    use_means = data_smoothing > 0

    def padded(t: torch.Tensor, square: bool = False, scale: float = 1.0) -> torch.Tensor:
        """``t`` (a copy made here) squared or scaled in place if asked, then padded by ``r``."""
        if square:
            t.square_()
        if scale != 1.0:
            t.mul_(scale)
        return torch.nn.functional.pad(t[None, None], (r,) * 6, mode="replicate")[0, 0]

    def on_device(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32)).to(dev)  # always a copy

    # memory: the padded copies (scan, estimate, local means) and the output, about four copies of the input
    # (five with a sloped range kernel: its 1 / h^2 per voxel).
    # the estimate and the local means are stored divided by their range-kernel widths, so a weight
    # is exp(-(d_g^2 + d_m^2)) of plain differences; with a sloped kernel the estimate's differences
    # are multiplied by each centre's 1 / h^2 instead
    sloped = strength_slope > 0
    g_all = padded(on_device(guide), scale=1.0 if sloped else math.sqrt(inv_h2))
    inv_h2_map = None
    if sloped:  # the widths from the padded estimate's interior: no further copy of it
        top = math.inf if strength_max is None else max(strength_max, strength)
        widths = slope_over_sigma(_at(g_all, r, 0, 0, 0), sigma, spacing).mul_(strength_slope).add_(strength)
        inv_h2_map = widths.clamp_(max=top).mul_(sigma).square_().reciprocal_()  # t >= 0: h >= strength
    scan = on_device(noisy)  # one copy of the scan: the local means are taken from it, then it is padded
    if use_means:  # one more padded copy
        means = smooth_volume(scan, data_smoothing, spacing)
        inv_m2 = 1.0 / (2.0 * (data_width * sigma * smoothed_noise_factor(data_smoothing, spacing)) ** 2)
        m_all = padded(means, scale=math.sqrt(inv_m2))
        del means
    y_all = padded(scan, square=rician)
    del scan
    X = guide.shape[0]
    out = np.empty(guide.shape, np.float32)
    slab = SLAB if dev.type == "cpu" else DEVICE_SLAB
    for start in range(0, X, slab):
        n = min(slab, X - start)
        g = g_all[start : start + n + 2 * r]
        y = y_all[start : start + n + 2 * r]
        m = m_all[start : start + n + 2 * r] if use_means else None
        k_slab = inv_h2_map[start : start + n] if inv_h2_map is not None else None
        mean, _ = _weighted_mean(g, y, m, r, offsets, k_slab)
        if rician:
            mean = mean.sub_(2.0 * sigma**2).clamp_(min=0.0).sqrt_()
        out[start : start + n] = mean.cpu().numpy()
    return out


class _WeightedMean(torch.autograd.Function):
    """Guided averaging's weighted mean over padded inputs, with its gradient in the guide.

    Inputs are padded by ``r`` on every spatial face: ``g`` the guide and ``m`` the local means (or
    None), each already divided by its range-kernel width, and ``y`` the values averaged. Forward and
    backward recompute the weights offset by offset, so memory stays a few copies of the batch
    instead of one per neighbour, as plain autograd would keep.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, g: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None, r: int, offsets: list[tuple[int, int, int]]
    ) -> torch.Tensor:
        ctx.r, ctx.offsets = r, offsets
        mean, den = _weighted_mean(g, y, m, r, offsets)
        ctx.save_for_backward(g, y, m, den, mean)
        return mean

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:  # type: ignore[override]
        # d mean_i / d w_ij = (y_j - mean_i) / den_i and d w_ij / d g_i = -d w_ij / d g_j = 2 (g_j - g_i) w_ij
        g, y, m, den, mean = ctx.saved_tensors
        r = ctx.r
        scaled = grad / den
        grad_g = torch.zeros_like(g)
        inner = grad_g[_slices(g, r, 0, 0, 0)]
        for w, diff, at in _weights(g, m, r, ctx.offsets):
            assert diff is not None
            q = (y[at] - mean).mul_(scaled).mul_(diff).mul_(w).mul_(2.0)
            inner.add_(q)
            grad_g[at].sub_(q)
        return grad_g, None, None, None, None


def _slices(t: torch.Tensor, r: int, i: int, j: int, k: int) -> tuple[Any, ...]:
    X, Y, Z = (n - 2 * r for n in t.shape[-3:])
    return (..., slice(r + i, r + i + X), slice(r + j, r + j + Y), slice(r + k, r + k + Z))


def _at(t: torch.Tensor, r: int, i: int, j: int, k: int) -> torch.Tensor:
    return t[_slices(t, r, i, j, k)]


def _weighted_mean(
    g: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None, r: int, offsets: list[tuple[int, int, int]],
    inv_h2: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted mean of ``y`` over the neighbourhood, sum of the weights), inputs as for :func:`_weights`."""
    num = torch.zeros_like(_at(g, r, 0, 0, 0))
    den = torch.zeros_like(num)
    for w, _, at in _weights(g, m, r, offsets, keep_diff=False, inv_h2=inv_h2):
        den += w
        num.addcmul_(w, y[at])
    return num.div_(den), den


def _weights(
    g: torch.Tensor, m: torch.Tensor | None, r: int, offsets: list[tuple[int, int, int]], keep_diff: bool = True,
    inv_h2: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, tuple[Any, ...]]]:
    """(weight, guide difference or None, slices of the neighbour) for each offset.

    ``g`` (the guide) and ``m`` (the local means, or None) are padded by ``r`` on every spatial face
    and already divided by their range-kernel widths, so a weight is ``exp(-(dg^2 + dm^2))``; with
    ``inv_h2`` (unpadded, one ``1 / h^2`` per centre) the guide is in plain units and a weight is
    ``exp(-(inv_h2 dg^2 + dm^2))``.
    """
    centre = _at(g, r, 0, 0, 0)
    m_centre = _at(m, r, 0, 0, 0) if m is not None else None
    for i, j, k in offsets:
        at = _slices(g, r, i, j, k)
        diff = g[at] - centre
        e = diff.square() if keep_diff else diff.square_()
        if inv_h2 is not None:
            e.mul_(inv_h2)
        if m is not None and m_centre is not None:
            d = m[at] - m_centre
            e.addcmul_(d, d)
        yield e.neg_().exp_(), diff if keep_diff else None, at


def guided_average_batch(
    noisy: torch.Tensor,
    guide: torch.Tensor,
    sigma: torch.Tensor,
    *,
    rician: bool,
    radius: float = RADIUS,
    strength: float = STRENGTH,
    data_smoothing: float = DATA_SMOOTHING,
    data_width: float = DATA_WIDTH,
) -> torch.Tensor:
    """:func:`guided_average` for a batch of patches in torch, differentiable in ``guide``.

    Training uses it to score the network's estimate by what guided averaging makes of it
    (``train.guided_loss_weight``). Same weights and edge handling (replicated borders) as
    :func:`guided_average`; the whole batch at once, so meant for patches, not whole scans.

    Args:
        noisy: (B, 1, X, Y, Z) noisy patches.
        guide: (B, 1, X, Y, Z) the network's estimates.
        sigma: (B,) noise sigma of each patch (> 0).
        rician, radius, strength, data_smoothing, data_width: as for :func:`guided_average`.
    """
    if radius < 1:
        return guide
    s = sigma.reshape(-1, 1, 1, 1, 1).to(guide.dtype)
    r = int(np.floor(radius))

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (r,) * 6, mode="replicate")

    g = padded(guide / (strength * s))
    with torch.no_grad():
        y = padded(noisy.square() if rician else noisy)
        m = None
        if data_smoothing > 0:
            means = gaussian_smooth(noisy, data_smoothing)
            width = math.sqrt(2.0) * data_width * smoothed_noise_factor(data_smoothing) * s
            m = padded(means / width)
    mean = _WeightedMean.apply(g, y, m, r, neighbourhood(radius))
    if rician:
        mean = (mean - 2.0 * s.square()).clamp(min=1e-12).sqrt()
    return mean


def shrink_faint_detail(
    x: np.ndarray,
    sigma: float,
    floor: float,
    *,
    smoothing: float = DETAIL_SMOOTHING,
    window: float = DETAIL_WINDOW,
    spacing: Sequence[float] | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Shrink the finest detail of ``x`` where it is no stronger than the noise left in it (a local Wiener gain).

    ``x`` is split into a Gaussian of ``smoothing`` voxels, ``s``, and the detail above it, ``d = x - s``.
    Guided averaging leaves a little noise in that detail, about ``floor`` x ``sigma`` in flat tissue
    (docs/design.md, section 4, "Faint detail"). Where the detail's local power ``P`` (``d^2`` under a
    Gaussian of ``window`` voxels) is no more than that noise's power ``n = (floor sigma)^2`` the
    output is ``s``; elsewhere ``s + (P - n) / P * d``, so edges and texture well above the noise are
    kept as they are.

    Args:
        x: (X, Y, Z) denoised volume.
        sigma: the scan's noise sigma, same units (> 0).
        floor: the noise left in the detail, as a fraction of ``sigma``; 0 returns ``x``.
        smoothing: Gaussian std in voxels below which lies the detail.
        window: Gaussian std in voxels over which its power is measured.
        spacing: the voxel size along each axis; both Gaussians are then round in its units, their stds
            in voxels of the finest axis. None: isotropic.
        device: where the arithmetic runs (None: the CPU); out of GPU memory, the CPU.

    Returns:
        (X, Y, Z) float32 array.
    """
    if floor <= 0 or sigma <= 0:
        return np.asarray(x, np.float32)
    return _on_device_or_cpu(lambda dev: _shrink_faint_detail(x, sigma, floor, smoothing, window, spacing, dev),
                             device, "detail shrinkage")


def _shrink_faint_detail(
    x: np.ndarray, sigma: float, floor: float, smoothing: float, window: float, spacing: Sequence[float] | None,
    dev: torch.device,
) -> np.ndarray:
    if np.ndim(x) != 3:
        raise ValueError(f"expected a 3D volume, got shape {np.shape(x)}")
    vol = torch.from_numpy(np.array(x, dtype=np.float32)).to(dev)
    smooth = smooth_volume(vol, smoothing, spacing)
    detail = vol.sub_(smooth)  # vol is a copy: reuse its memory
    del vol
    power = smooth_volume(detail.square(), window, spacing)
    noise = (floor * sigma) ** 2
    gain = (power - noise).clamp_(min=0.0).div_(power.clamp_(min=torch.finfo(torch.float32).tiny))
    del power
    return smooth.add_(gain.mul_(detail)).cpu().numpy()
