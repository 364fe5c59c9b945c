"""Intensity normalization pairs and the MONAI transforms used for training.

Normalization maps a scan into the model's units, where ``sigma`` is measured, and back:

* MR: divide by the 99.9th percentile of the volume (``offset`` 0), so tissue lies in about [0, 1]
  and the noise level is a fraction of the bright-tissue intensity (the BrainWeb/BM4D convention).
* CT: ``(HU + 1000) / 2000``: the window [-1000, 1000] HU onto [0, 1], not clipped, so bone and
  metal above 1000 HU survive the round trip.

Each :class:`Normalization` records its parameters so :meth:`Normalization.denormalize` inverts it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

MR_PERCENTILE = 99.9
# magnitude MR has no negative voxels, bar a few from interpolation ringing: a larger share means a
# normalized or mean-centred scan, or CT in HU (refused by denoise and by MR training alike)
MR_MAX_NEGATIVE_SHARE = 0.05
CT_LOW, CT_HIGH = -1000.0, 1000.0


def negative_share(values: np.ndarray) -> float:
    """The share of ``values`` below 0 (0 for an empty array)."""
    return float(np.count_nonzero(values < 0)) / max(values.size, 1)


@dataclass(frozen=True)
class Normalization:
    """``normalized = (value - offset) / scale``; recorded so it can be undone exactly."""

    offset: float
    scale: float
    modality: Literal["MR", "CT"]

    def normalize(self, values: Any) -> Any:
        return (values - self.offset) / self.scale

    def denormalize(self, values: Any) -> Any:
        return values * self.scale + self.offset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_normalization(data: np.ndarray, modality: Literal["MR", "CT"]) -> Normalization:
    """The normalization of a scan (any shape) for ``modality``; NaNs are ignored."""
    if modality == "CT":
        return Normalization(offset=CT_LOW, scale=CT_HIGH - CT_LOW, modality="CT")
    finite = np.asarray(data)[np.isfinite(data)]
    if finite.size == 0:
        raise ValueError("the volume has no finite voxel")
    scale = float(np.percentile(finite, MR_PERCENTILE))
    if scale <= 0:
        scale = float(np.abs(finite).max())
    if scale <= 0:
        scale = 1.0
    return Normalization(offset=0.0, scale=scale, modality="MR")


# ---------------------------------------------------------------- MONAI training transforms


def _map_transform_base() -> type:
    from monai.transforms import MapTransform

    return MapTransform


def normalize_intensityd(keys: list[str], modality: Literal["MR", "CT"]) -> Any:
    """A MONAI dictionary transform applying :func:`fit_normalization` (fitted on the first key)."""
    base = _map_transform_base()

    class NormalizeIntensityd(base):  # type: ignore[misc, valid-type]
        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            norm = fit_normalization(np.asarray(d[self.keys[0]]), modality)
            for key in self.key_iterator(d):
                d[key] = norm.normalize(d[key])
            return d

    return NormalizeIntensityd(keys)


def foreground_maskd(key: str, mask_key: str, threshold: float) -> Any:
    """Adds ``mask_key``: voxels of ``key`` above ``threshold`` (normalized units), for patch sampling."""
    base = _map_transform_base()

    class ForegroundMaskd(base):  # type: ignore[misc, valid-type]
        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            d[mask_key] = (d[key] > threshold).float() if hasattr(d[key], "float") else d[key] > threshold
            return d

    return ForegroundMaskd([key])


def _own_sigma(arr: np.ndarray, modality: Literal["MR", "CT"]) -> float:
    """The noise std of a normalized volume; the CT estimator works in HU, so CT goes there and back."""
    from medidiff.noise import estimate_sigma

    if modality == "CT":
        hu = np.asarray(arr, dtype=np.float64) * (CT_HIGH - CT_LOW) + CT_LOW
        return float(estimate_sigma(hu.astype(np.float32), "CT") / (CT_HIGH - CT_LOW))
    return float(estimate_sigma(np.asarray(arr, dtype=np.float32), "MR"))


def nlm_cleanupd(key: str, modality: Literal["MR", "CT"], method: str = "classic") -> Any:
    """Lightly denoises ``key`` with DIPY's non-local means at its own estimated noise level.

    Clinical scans used as training targets carry noise of their own; a model trained to reproduce
    them learns to keep it. Cleaning the targets first (normalized units, so CT air is near 0 and
    non-negative as DIPY expects) removes most of it at the price of slight NLM smoothing.
    ``method`` is DIPY's: ``classic`` removes about 0.55-0.7 sigma of signal on the training scans;
    ``blockwise`` removes 2-2.5 sigma, i.e. anatomy as well as noise (docs/design.md).
    """
    base = _map_transform_base()

    class NlmCleanupd(base):  # type: ignore[misc, valid-type]
        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            from dipy.denoise.nlmeans import nlmeans


            d = dict(data)
            arr = np.asarray(d[key][0], dtype=np.float64)
            shift = max(0.0, -float(arr.min()))
            sigma = _own_sigma(arr, modality)
            cleaned = nlmeans(arr + shift, sigma=sigma, rician=modality == "MR", method=method) - shift
            d[key] = d[key].clone()
            d[key][0] = d[key].new_tensor(cleaned.astype(np.float32))
            return d

    return NlmCleanupd([key])


def own_noised(key: str, modality: Literal["MR", "CT"]) -> Any:
    """Stores the estimated noise std of ``key`` (normalized units) as ``own_sigma`` for recorruption."""
    base = _map_transform_base()

    class OwnNoised(base):  # type: ignore[misc, valid-type]
        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            d["own_sigma"] = _own_sigma(np.asarray(d[key][0]), modality)
            return d

    return OwnNoised([key])


def _target_step(key: str, modality: Literal["MR", "CT"], target_cleanup: str) -> list[Any]:
    if target_cleanup == "recorrupt":
        return [own_noised(key, modality)]
    if target_cleanup in ("nlm", "nlm-blockwise"):
        return [nlm_cleanupd(key, modality, "blockwise" if target_cleanup == "nlm-blockwise" else "classic")]
    return []


def training_transforms(
    modality: Literal["MR", "CT"],
    patch_size: list[int],
    foreground_fraction: float,
    paired: bool,
    target_cleanup: Literal["none", "nlm", "nlm-blockwise", "recorrupt"] = "none",
) -> tuple[Any, Any]:
    """(deterministic, random) MONAI pipelines for training.

    The deterministic part (orientation to RAS, normalization, foreground voxel lists) is cached once per
    volume; the random part (foreground-weighted patch, flips, 90-degree rotations in the axial
    plane, MR contrast jitter) runs per sample with a seed derived from the sample index, so a run
    resumed from a checkpoint draws exactly the patches the uninterrupted run would have drawn.
    ``target_cleanup``: ``nlm``/``nlm-blockwise`` clean the target once; ``recorrupt`` records its
    own noise level as ``own_sigma`` instead and leaves out the MR intensity jitter, which would
    change that level.
    """
    from monai.transforms import (
        CastToTyped,
        Compose,
        DeleteItemsd,
        EnsureTyped,
        FgBgToIndicesd,
        Orientationd,
        RandAdjustContrastd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
    )

    keys = ["image", "target"] if paired else ["image"]
    pos = max(foreground_fraction, 1e-3)
    neg = max(1.0 - foreground_fraction, 1e-3)
    deterministic = Compose(
        [
            EnsureTyped(keys=keys, track_meta=True),
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            normalize_intensityd(keys, modality),
            *_target_step(keys[-1], modality, target_cleanup),
            foreground_maskd(keys[-1], "foreground", 0.05 if modality == "MR" else 0.3),
            # the crop's voxel lists, found once per volume (int32: the memory the float mask took); the
            # whole-volume mask is then dropped, since the crop would deep-copy it into every sample
            FgBgToIndicesd(keys="foreground"),
            CastToTyped(keys=["foreground_fg_indices", "foreground_bg_indices"], dtype=np.int32),
            DeleteItemsd(keys="foreground"),
        ]
    )
    augment: list[Any] = [
        RandCropByPosNegLabeld(
            keys=keys, label_key="foreground", image_key=keys[0], spatial_size=patch_size, pos=pos, neg=neg,
            num_samples=1, fg_indices_key="foreground_fg_indices", bg_indices_key="foreground_bg_indices",
        ),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)),
    ]
    if modality == "MR" and target_cleanup != "recorrupt":  # recorruption needs the noise level intact
        augment += [
            RandScaleIntensityd(keys=keys, factors=0.15, prob=0.5),
            RandAdjustContrastd(keys=keys, gamma=(0.8, 1.25), prob=0.3),
        ]
    return deterministic, Compose(augment)
