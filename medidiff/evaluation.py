"""Score denoised scans: PSNR and SSIM against a reference, or no-reference measures without one.

The definitions live in :mod:`medidiff.metrics` and ``docs/evaluation.md``. Defaults:

* modality: ``--modality``, else the reference's (or, without a reference, the input's) recorded
  modality, else :func:`medidiff.io.guess_modality`;
* window: CT ``[-1000, 1000]`` HU, MR none; both scans are clipped to the window first;
* data range ``R``: ``--data-range``, else the window width (2000 for CT), else the reference's
  ``max - min`` (1 for a reference scaled to [0, 1], the BrainWeb convention);
* mask: ``auto`` = :func:`medidiff.metrics.foreground_mask` of the reference (MR rule or CT body
  mask), a mask file (non-zero = inside), or ``none`` (every voxel).

Every result carries the settings it was computed with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medidiff import metrics
from medidiff.errors import MedidiffError
from medidiff.volume import Volume

#: without a reference, the MR mask's lowest threshold in noise sigmas of the scan it is made from
NOISE_FLOOR_SIGMAS = 2.0
SSIM_LABEL = "skimage uniform 7-voxel window, K1=0.01 K2=0.03, map averaged over the mask"
MONAI_SSIM_LABEL = "MONAI Gaussian 11-voxel window (sigma 1.5), map averaged over the mask"


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` -> ``(lo, hi)``; None stays None."""
    if text is None:
        return None
    parts = text.replace(":", ",").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise MedidiffError(f"--window {text!r}: expected LO,HI such as --window=-1000,1000") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise MedidiffError(f"--window {text!r}: LO and HI must be finite numbers, e.g. --window=-1000,1000")
    if not hi > lo:
        raise MedidiffError(f"--window {text!r}: HI must be above LO, e.g. --window=-1000,1000")
    return lo, hi


def _modality(volume: Volume, given: str | None) -> metrics.MaskRule:
    value = given if given is not None else volume.meta.modality
    if value is None:
        from medidiff.io import guess_modality

        value = guess_modality(volume)
    if value == "MR":
        return "MR"
    if value == "CT":
        return "CT"
    raise MedidiffError(f"modality {value!r}: use MR or CT")


def _finite(volume: Volume, name: str) -> None:
    bad = int(np.size(volume.data) - np.count_nonzero(np.isfinite(volume.data)))
    if bad:
        label = f"{name} {volume.meta.source_path}".strip()
        raise MedidiffError(f"{label}: {bad} voxels are NaN or infinite; fix or mask them before evaluating")


def _as_mask(volume: Volume) -> np.ndarray:
    return np.asarray(volume.data[0] > 0.5)


def _clean(value: Any) -> Any:
    """NaN/inf -> None so the result is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean_over_volumes(
    fn: Callable[..., float], ref: np.ndarray, test: np.ndarray, mask: np.ndarray, data_range: float
) -> float:
    """A 3D measure averaged over the volumes of (C, X, Y, Z) arrays (equal to pooling: same mask)."""
    return float(np.mean([fn(r, t, mask, data_range=data_range) for r, t in zip(ref, test, strict=True)]))


def evaluate(
    reference: Volume | None,
    inputs: Sequence[Volume],
    *,
    mask: Volume | str = "auto",
    data_range: float | None = None,
    window: tuple[float, float] | None = None,
    modality: str | None = None,
    monai_ssim: bool = False,
    noisy: Volume | None = None,
    roi: tuple[Volume, Volume] | None = None,
) -> list[dict[str, Any]]:
    """Score each input; one dict per input.

    Args:
        reference: clean scan, or None for the no-reference measures only.
        inputs: scans to score, on the reference's grid (shape and affine within 1e-3).
        mask: ``"auto"``, ``"none"`` or a mask Volume (non-zero = inside).
        data_range: peak ``R`` in the scans' units; default as in the module docstring.
        window: ``(lo, hi)`` clip applied to both scans; default ``(-1000, 1000)`` for CT.
        modality: ``"MR"``/``"CT"``; default from the scans.
        monai_ssim: also report MONAI's Gaussian-window SSIM as ``ssim_monai``.
        noisy: the scan before denoising; adds the residual measures (``noisy - input``).
        roi: two ROI mask Volumes; adds contrast and CNR of each input.

    Returns:
        With a reference: ``psnr`` (dB), ``ssim`` (and ``ssim_monai``) per input; without:
        ``background_std`` and related numbers. Each dict has ``input`` and ``settings``.

    Raises:
        MedidiffError: geometry mismatch, empty mask, non-finite voxels, bad options.
    """
    if not inputs:
        raise MedidiffError("no input to evaluate; pass --input FILE")
    anchor = reference if reference is not None else (noisy if noisy is not None else inputs[0])
    for index, volume in enumerate(inputs):
        if volume is not anchor:
            metrics.check_geometry(anchor, volume, f"input {index + 1}" if len(inputs) > 1 else "input")
        _finite(volume, "input")
        if volume.n_volumes != anchor.n_volumes:
            raise MedidiffError(
                f"input has {volume.n_volumes} volumes but the reference has {anchor.n_volumes}; "
                "compare scans with the same number of volumes"
            )
    if noisy is not None and any(volume.n_volumes != noisy.n_volumes for volume in inputs):
        raise MedidiffError(
            f"the noisy scan has {noisy.n_volumes} volumes and the input {inputs[0].n_volumes}; "
            "give the noisy scan the input was denoised from"
        )
    for extra, name in ((noisy, "noisy scan"), *(((r, "ROI mask") for r in roi) if roi else ())):
        if extra is not None and extra is not anchor:
            metrics.check_geometry(anchor, extra, name)
    mod = _modality(anchor, modality)
    if window is None and mod == "CT":
        window = metrics.CT_WINDOW
    slice_axis = metrics.axial_axis(anchor.meta.affine)

    if isinstance(mask, Volume):
        metrics.check_geometry(anchor, mask, "mask")
        fg, mask_label = _as_mask(mask), mask.meta.source_path or "given mask"
    elif mask == "none":
        fg, mask_label = np.ones(anchor.spatial_shape, dtype=bool), "none (whole volume)"
    elif mask == "auto":
        smooth, floor = 0.0, 0.0
        if reference is None:  # a noisy scan: smooth it, and keep its Rician background out (MR)
            smooth = 1.0
            if mod == "MR":
                from medidiff.noise import estimate_sigma

                floor = NOISE_FLOOR_SIGMAS * float(estimate_sigma(np.nan_to_num(anchor.data[0]), "MR"))
        fg = metrics.foreground_mask(anchor.data[0], mod, smooth=smooth, slice_axis=slice_axis, noise_floor=floor)
        mask_label = f"auto ({'CT body' if mod == 'CT' else 'MR foreground'} rule"
        mask_label += ", from the reference)" if reference is not None else ", from the smoothed scan)"
    else:
        raise MedidiffError(f"--mask {mask!r}: give a mask file, 'auto' or 'none'")
    if not fg.any():
        raise MedidiffError("the mask is empty; pass another --mask or --mask none")

    settings: dict[str, Any] = {
        "modality": mod,
        "window": list(window) if window is not None else None,
        "mask": mask_label,
        "mask_voxels": int(fg.sum()),
    }
    if reference is not None:
        _finite(reference, "reference")
        ref = metrics.apply_window(reference.data, window)
        if data_range is None:
            peak, source = metrics.default_data_range(reference.data, window)
        else:
            peak, source = float(data_range), "given"
        settings.update(
            data_range=peak,
            data_range_source=source,
            psnr="10 log10(R^2 / MSE over the mask)",
            ssim=SSIM_LABEL,
        )
        if monai_ssim:
            settings["ssim_monai"] = MONAI_SSIM_LABEL

    results = []
    for index, volume in enumerate(inputs):
        row: dict[str, Any] = {"input": volume.meta.source_path or f"input {index + 1}"}
        if reference is not None:
            row["reference"] = reference.meta.source_path
            test = metrics.apply_window(volume.data, window)
            row["psnr"] = metrics.psnr(ref, test, fg, data_range=peak)
            row["ssim"] = _mean_over_volumes(metrics.ssim, ref, test, fg, peak)
            if monai_ssim:
                row["ssim_monai"] = _mean_over_volumes(metrics.ssim_monai, ref, test, fg, peak)
        else:
            bg = metrics.background_mask(volume.data[0], mod, foreground=fg)
            row.update(metrics.background_noise(volume.data[0], bg, mod))
        if noisy is not None:
            row.update(metrics.residual_measures(noisy.data[0], volume.data[0], fg))
        if roi is not None:
            row.update(metrics.contrast_measures(volume.data[0], _as_mask(roi[0]), _as_mask(roi[1])))
        row["settings"] = settings
        results.append({key: _clean(value) for key, value in row.items()})
    return results


def evaluate_files(
    reference: str | None,
    inputs: Sequence[str],
    *,
    mask: str = "auto",
    data_range: float | None = None,
    window: str | tuple[float, float] | None = None,
    modality: str | None = None,
    monai_ssim: bool = False,
    noisy: str | None = None,
    roi: Sequence[str] | None = None,
    series: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`evaluate` on files read with :func:`medidiff.io.read_volume` (paths are recorded as given)."""
    from medidiff.io import read_volume

    def read(path: str) -> Volume:
        volume = read_volume(path, series=series)
        return Volume(volume.data, volume.meta.replace(source_path=str(path)))

    ref = read(reference) if reference is not None else None
    tests = [read(p) for p in inputs]
    mask_arg: Volume | str = mask if mask in ("auto", "none") else read(mask)
    win = parse_window(window) if isinstance(window, str) else window
    if roi is not None and len(roi) != 2:
        raise MedidiffError("--roi needs two mask files: A B")
    roi_volumes = (read(roi[0]), read(roi[1])) if roi else None
    return evaluate(
        ref,
        tests,
        mask=mask_arg,
        data_range=data_range,
        window=win,
        modality=modality,
        monai_ssim=monai_ssim,
        noisy=read(noisy) if noisy else None,
        roi=roi_volumes,
    )


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_COLUMNS: list[tuple[str, str, int]] = [
    ("psnr", "PSNR dB", 2),
    ("ssim", "SSIM", 4),
    ("ssim_monai", "SSIM MONAI", 4),
    ("background_std", "bg std", 4),
    ("background_sigma_rayleigh", "bg sigma (Rayleigh)", 4),
    ("residual_mean", "resid mean", 4),
    ("residual_std", "resid std", 4),
    ("residual_corr_output", "corr(resid,out)", 3),
    ("residual_corr_structure", "corr(resid,struct)", 3),
    ("contrast", "contrast", 4),
    ("cnr", "CNR", 2),
]


def format_report(results: Sequence[dict[str, Any]]) -> str:
    """Plain-text table: the settings first, then one row per input."""
    if not results:
        return ""
    settings = results[0]["settings"]
    lines = [f"reference: {results[0].get('reference') or 'none (no-reference measures)'}"]
    lines.append(f"modality: {settings['modality']}  window: {settings['window'] or 'none'}")
    lines.append(f"mask: {settings['mask']} ({settings['mask_voxels']} voxels)")
    if "data_range" in settings:
        lines.append(f"data range R: {settings['data_range']:g} ({settings['data_range_source']})")
        lines.append(f"PSNR: {settings['psnr']}; SSIM: {settings['ssim']}")
        if "ssim_monai" in settings:
            lines.append(f"SSIM MONAI: {settings['ssim_monai']}")
    columns = [c for c in _COLUMNS if any(c[0] in r for r in results)]
    name_width = max(len("input"), *(len(str(r["input"])) for r in results))
    widths = [max(len(title), 8) for _, title, _ in columns]
    header = "input".ljust(name_width) + "".join(f"  {t:>{w}}" for (_, t, _), w in zip(columns, widths, strict=True))
    lines.append(header)
    for r in results:
        cells = "".join(f"  {_fmt(r.get(key), d):>{w}}" for (key, _, d), w in zip(columns, widths, strict=True))
        lines.append(str(r["input"]).ljust(name_width) + cells)
    return "\n".join(lines)
