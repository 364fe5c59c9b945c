"""Training data: finding scans, loading them once, and drawing reproducible random patches.

Sources (``data.train`` / ``data.val``): a folder searched recursively for NIfTI/NRRD/MHA files and
DICOM series (a BIDS root works; ``derivatives/`` and hidden folders are skipped), a glob, a list
of paths, or an MSD-style datalist JSON ``{"training": [{"image": ...}], "validation": [...]}``
whose entries may carry ``"target"``: a clean scan of the same geometry, making a real noisy/clean
pair (e.g. low-/full-dose CT).

Sample ``i`` of the :class:`PatchDataset` is drawn with a random state seeded by ``(seed, i)``, so
the patch stream depends only on the sample index: a resumed run and every DataLoader worker or
DDP rank draw exactly what an uninterrupted single-process run would.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medidiff.errors import ConfigError, InputError
from medidiff.files import expand_user
from medidiff.io import looks_like_dicom

log = logging.getLogger(__name__)

SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_SKIP_DIRS = {"derivatives", "sourcedata", "code"}


@dataclass(frozen=True)
class Item:
    """One training scan: ``image`` (path), optional clean ``target``, optional DICOM series index."""

    image: str
    target: str | None = None


def _is_scan_file(path: Path) -> bool:
    return path.name.lower().endswith(SCAN_SUFFIXES)


def scan_folder(root: Path) -> list[Item]:
    """Every scan below ``root``: NIfTI/NRRD/MHA files and top-most DICOM folders (hidden and BIDS
    ``derivatives``/``sourcedata``/``code`` folders skipped)."""
    items: list[Item] = []
    dicom_dirs: set[Path] = set()
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(p.startswith(".") or p in _SKIP_DIRS for p in rel_parts):
            continue
        if not path.is_file():
            continue
        if _is_scan_file(path):
            if path.suffix.lower() == ".raw":
                continue
            items.append(Item(str(path)))
        elif path.parent not in dicom_dirs and looks_like_dicom(path):
            dicom_dirs.add(path.parent)
    # a DICOM folder is read recursively by the reader: keep only the top-most ones
    tops = [d for d in sorted(dicom_dirs) if not any(p in dicom_dirs for p in d.parents)]
    items.extend(Item(str(d)) for d in tops)
    return items


def _datalist(path: Path, split: Literal["training", "validation"]) -> list[Item]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable datalist JSON ({exc})") from None
    entries = doc.get(split) if isinstance(doc, dict) else None
    if entries is None:
        raise ConfigError(f'{path}: no "{split}" list in the datalist JSON')
    if not isinstance(entries, list):
        raise ConfigError(
            f'{path}: "{split}" must be a list of file names or of {{"image": ..., "target": ...}} entries, '
            f"got {type(entries).__name__}"
        )
    items = []
    for n, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or "image" not in entry:
            raise ConfigError(f'{path}: entry {n} of "{split}" has no "image"')
        target = entry.get("target")
        if not isinstance(entry["image"], str) or not entry["image"] or not (
            target is None or (isinstance(target, str) and target)
        ):
            raise ConfigError(f'{path}: entry {n} of "{split}": "image" and "target" must be file names (text)')
        image = str((path.parent / entry["image"]).resolve())
        items.append(Item(image, str((path.parent / target).resolve()) if target else None))
    return items


def discover(spec: str | list[str], split: Literal["training", "validation"] = "training") -> list[Item]:
    """Expand a ``data.train``/``data.val`` value into scan items (see module docstring)."""
    if isinstance(spec, list):
        out: list[Item] = []
        for entry in spec:
            out.extend(discover(entry, split))
        return out
    if not spec:
        return []
    path = expand_user(spec)
    if path.is_file() and path.suffix.lower() == ".json":
        return _datalist(path, split)
    if path.is_dir():
        return scan_folder(path)
    if path.is_file():
        return [Item(str(path))]
    if any(ch in spec for ch in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        out = []
        for m in matches:
            mp = Path(m)
            out.extend(scan_folder(mp) if mp.is_dir() else [Item(m)] if _is_scan_file(mp) else [])
        return out
    key = "data.train" if split == "training" else "data.val"
    raise ConfigError(f"{spec}: no such file or folder ({key}); check the path")


# ---------------------------------------------------------------- loading and patches


def _load_item(item: Item) -> list[dict[str, Any]]:
    """Read an item into MONAI-style dicts, one per 3D volume of a 4D series."""
    from medidiff.io import read_volume

    image = read_volume(item.image)
    target = read_volume(item.target) if item.target else None
    if target is not None:
        if image.spatial_shape != target.spatial_shape or not np.allclose(
            image.meta.affine, target.meta.affine, atol=1e-3
        ):
            raise InputError(
                f"{item.image} and its target {item.target} differ in geometry "
                f"({image.spatial_shape} vs {target.spatial_shape}); pairs must be co-registered on one grid"
            )
    out = []
    for c in range(image.n_volumes):
        one = image.with_data(image.data[c : c + 1]).to_metatensor()
        entry: dict[str, Any] = {"image": one, "name": item.image}
        if target is not None:
            t = min(c, target.n_volumes - 1)
            entry["target"] = target.with_data(target.data[t : t + 1]).to_metatensor()
        out.append(entry)
    return out


def zoom_in(patch: torch.Tensor, rng: np.random.Generator, zoom_max: float) -> torch.Tensor:
    """A random sub-block of ``patch`` (C, X, Y, Z) enlarged trilinearly to the patch's size.

    Each axis is enlarged by its own factor drawn uniformly in [1, ``zoom_max``], so the result shows
    the anatomy as a scan with that much finer voxels would (in-plane only, through-plane only, or both).
    """
    size = patch.shape[1:]
    factors = rng.uniform(1.0, zoom_max, size=3)
    sub = [max(2, int(round(n / f))) for n, f in zip(size, factors, strict=True)]
    start = [int(rng.integers(n - s + 1)) for n, s in zip(size, sub, strict=True)]
    block = patch[:, start[0] : start[0] + sub[0], start[1] : start[1] + sub[1], start[2] : start[2] + sub[2]]
    enlarged = torch.nn.functional.interpolate(block[None], size=tuple(size), mode="trilinear", align_corners=False)
    return enlarged[0].contiguous()


class PatchDataset(torch.utils.data.Dataset):
    """Random patches from scans loaded and normalized once; sample ``i`` is a pure function of ``i``.

    Each sample is a dict with ``x0`` (1, X, Y, Z) clean patch and, for real pairs, ``noisy``; with
    ``target_cleanup="recorrupt"``, ``x0`` keeps the scan's noise and ``own_sigma`` gives its std.
    A share ``zoom_fraction`` of the patches is cut smaller and enlarged (:func:`zoom_in`), as in
    scans with finer voxels; a share ``mask_fraction`` is zeroed outside a random mask
    (:mod:`medidiff.masking`), as in skull-stripped or defaced scans.
    """

    def __init__(
        self,
        items: list[Item],
        modality: Literal["MR", "CT"],
        patch_size: list[int],
        foreground_fraction: float,
        seed: int,
        skip_unreadable: bool = False,
        phantoms: int = 0,
        target_cleanup: Literal["none", "nlm", "nlm-blockwise", "recorrupt"] = "none",
        mask_fraction: float = 0.0,
        source: str = "data.train",
        zoom_fraction: float = 0.0,
        zoom_max: float = 1.0,
    ) -> None:
        from medidiff.transforms import training_transforms

        self.seed = int(seed)
        self.volumes: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        paired = any(it.target for it in items)
        if paired and not all(it.target for it in items):
            raise ConfigError('either every training entry has a "target" or none does')
        if paired and target_cleanup == "recorrupt":
            raise ConfigError(
                'data.target_cleanup: recorrupt is for scans without targets; use "none" or "nlm" for pairs'
            )
        if paired and mask_fraction > 0:
            raise ConfigError("data.mask_fraction zeroes clean targets before synthetic noise; set it to 0 for pairs")
        self.recorrupt = target_cleanup == "recorrupt"
        self.mask_fraction = float(mask_fraction)
        if paired and zoom_fraction > 0:
            raise ConfigError("data.zoom_fraction enlarges clean targets before synthetic noise; set it to 0 for pairs")
        self.zoom_fraction, self.zoom_max = float(zoom_fraction), float(zoom_max)
        deterministic, self.augment = training_transforms(
            modality, patch_size, foreground_fraction, paired, target_cleanup
        )
        self.paired = paired
        for item in items:
            try:
                loaded = _load_item(item)
            except InputError as exc:
                if not skip_unreadable:
                    raise InputError(
                        f"{exc} (or set data.skip_unreadable: true to skip such files)"
                    ) from None
                log.warning("skipping unreadable training file: %s", exc)
                self.skipped.append(item.image)
                continue
            for entry in loaded:
                self._check_size(entry, patch_size)
                if modality == "MR":
                    self._check_magnitude(entry)
                self.volumes.append(deterministic(entry))
        if phantoms and not paired:
            plain, _ = training_transforms(modality, patch_size, foreground_fraction, paired)
            self.volumes.extend(self._phantoms(phantoms, modality, patch_size, plain))
        if not self.volumes:
            raise ConfigError(
                f"{source} found no readable scan (NIfTI, NRRD, MHA or DICOM); check the folder, glob or list it gives"
            )

    @classmethod
    def from_config(cls, cfg: Any, split: Literal["training", "validation"]) -> PatchDataset:
        """The training (``data.train``, with phantoms) or validation (``data.val``) set of a config.

        The validation set draws with seed ``train.seed + 1`` and never adds phantoms.
        """
        training = split == "training"
        return cls(
            discover(cfg.data.train if training else cfg.data.val, split),
            cfg.data.modality,
            cfg.data.patch_size,
            cfg.data.foreground_fraction,
            cfg.train.seed if training else cfg.train.seed + 1,
            cfg.data.skip_unreadable,
            cfg.data.synthetic_phantoms if training else 0,
            cfg.data.target_cleanup,
            cfg.data.mask_fraction if training else 0.0,
            source=f"data.train ({cfg.data.train})" if training else f"data.val ({cfg.data.val})",
            zoom_fraction=cfg.data.zoom_fraction if training else 0.0,
            zoom_max=cfg.data.zoom_max,
        )

    @staticmethod
    def _check_size(entry: dict[str, Any], patch_size: list[int]) -> None:
        shape = tuple(entry["image"].shape[1:])
        if any(s < p for s, p in zip(shape, patch_size, strict=True)):
            fix = (
                "training takes 3D volumes: remove it from the training data"
                if min(shape) < 8 else "lower data.patch_size (at least 8) or leave this scan out"
            )
            raise ConfigError(f"{entry['name']}: volume {shape} is smaller than data.patch_size {patch_size}; {fix}")

    @staticmethod
    def _check_magnitude(entry: dict[str, Any]) -> None:
        """An MR training scan must be a magnitude image; CT in HU (or normalized data) is refused."""
        from medidiff.transforms import MR_MAX_NEGATIVE_SHARE, negative_share

        image = np.asarray(entry["image"])
        finite = image[np.isfinite(image)]
        negative = negative_share(finite)
        if negative > MR_MAX_NEGATIVE_SHARE:  # the rule medidiff denoise applies to MR
            raise ConfigError(
                f"{entry['name']}: {negative:.1%} of its voxels are negative, which an MR magnitude image "
                "cannot be (CT in HU? set data.modality: CT, or train MR and CT models separately)"
            )

    @staticmethod
    def _phantoms(n: int, modality: str, patch_size: list[int], transform: Any) -> list[dict[str, Any]]:
        from medidiff.phantom import head_phantom, phantom_affine
        from medidiff.volume import Volume

        out = []
        for k in range(n):
            sx, sy, sz = (max(p, s) for p, s in zip(patch_size, (96, 112, 96), strict=True))
            shape = (sx, sy, sz)
            contrast = "CT" if modality == "CT" else ("T2" if k % 2 else "T1")
            clean = head_phantom(shape, contrast=contrast, seed=1000 + k)  # type: ignore[arg-type]
            vol = Volume.from_array(clean, phantom_affine(shape, 1.5))
            out.append(transform({"image": vol.to_metatensor(), "name": f"phantom-{k}"}))
        return out

    def __len__(self) -> int:
        return 2**62  # samples are indexed by a global counter, never exhausted

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        self.augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
        patch = self.augment(volume)
        if isinstance(patch, list):
            patch = patch[0]
        out = {
            "x0": torch.as_tensor(
                np.asarray(patch["target" if self.paired else "image"]), dtype=torch.float32
            )
        }
        if self.zoom_fraction > 0 and rng.random() < self.zoom_fraction:
            out["x0"] = zoom_in(out["x0"], rng, self.zoom_max)
        if self.mask_fraction > 0 and rng.random() < self.mask_fraction:
            from medidiff.masking import zero_outside_mask

            out["x0"] = torch.from_numpy(zero_outside_mask(out["x0"].numpy(), rng))
        if self.paired:
            out["noisy"] = torch.as_tensor(np.asarray(patch["image"]), dtype=torch.float32)
        if self.recorrupt:  # phantoms are clean: own noise 0
            out["own_sigma"] = torch.tensor(float(patch.get("own_sigma", 0.0)), dtype=torch.float32)
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(index)


class IndexRange(torch.utils.data.Sampler[int]):
    """Yields the global sample indices of one rank, step after step, from ``start_step`` on."""

    def __init__(self, start_step: int, batch_size: int, rank: int, world_size: int) -> None:
        self.start_step, self.batch_size, self.rank, self.world = start_step, batch_size, rank, world_size

    def __iter__(self):  # type: ignore[no-untyped-def]
        step = self.start_step
        while True:
            base = (step * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1

    def __len__(self) -> int:
        return 2**62
