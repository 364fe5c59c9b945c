"""The volume contract: channel-first float32 data plus the geometry needed to write it back exactly.

Every reader returns a :class:`Volume`; every writer takes one. ``data`` has shape ``(C, X, Y, Z)``
in the file's own voxel order (never reoriented), where ``C`` is the number of volumes of a 4D
series (1 for a 3D scan). ``meta.affine`` maps voxel indices to RAS+ world millimetres (nibabel's
convention), whatever the source format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from medidiff.errors import InputError

Modality = Literal["MR", "CT"]


@dataclass(frozen=True)
class VolumeMeta:
    """Geometry and provenance carried unchanged from reader to writer.

    Attributes:
        affine: 4x4 voxel-to-RAS+ matrix in millimetres (float64).
        source_format: ``"nifti"``, ``"dicom"``, ``"nrrd"``, ``"mha"`` or ``"array"``.
        original_dtype: NumPy dtype name of the stored voxels (``"int16"``, ``"float32"``...).
        modality: ``"MR"``, ``"CT"`` or None when unknown.
        source_path: where the volume was read from ("" for in-memory data).
        header: format-specific details a writer needs for an exact round trip (for NIfTI the
            nibabel header; for DICOM a dict of selected tags). Not part of the public contract.
        tags: selected human-readable tags (DICOM series description, echo time...).
    """

    affine: np.ndarray
    source_format: str = "array"
    original_dtype: str = "float32"
    modality: Modality | None = None
    source_path: str = ""
    header: Any = None
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along the three array axes."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Orientation codes of the array axes, e.g. ``"RAS"`` or ``"LPS"``."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def replace(self, **changes: Any) -> VolumeMeta:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Volume:
    """A scan: ``data`` (C, X, Y, Z) float32 and its :class:`VolumeMeta`."""

    data: np.ndarray
    meta: VolumeMeta

    def __post_init__(self) -> None:
        if self.data.ndim != 4:
            raise InputError(f"Volume data must be (C, X, Y, Z), got shape {self.data.shape}")
        if self.data.dtype != np.float32:
            object.__setattr__(self, "data", self.data.astype(np.float32))

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def n_volumes(self) -> int:
        return int(self.data.shape[0])

    def with_data(self, data: np.ndarray) -> Volume:
        """The same geometry with new voxel values of the same spatial shape."""
        if data.ndim == 3:
            data = data[None]
        if tuple(data.shape[1:]) != self.spatial_shape:
            raise ValueError(f"new data shape {data.shape[1:]} differs from {self.spatial_shape}")
        return Volume(np.ascontiguousarray(data, dtype=np.float32), self.meta)

    @classmethod
    def from_array(
        cls, array: np.ndarray, affine: np.ndarray | None = None, modality: Modality | None = None
    ) -> Volume:
        """Wrap a 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)`` array (NIfTI axis order) as a Volume."""
        array = np.asarray(array)
        if array.ndim == 3:
            data = array[None]
        elif array.ndim == 4:
            data = np.moveaxis(array, -1, 0)
        else:
            raise InputError(
                f"expected a 3D (X, Y, Z) or 4D (X, Y, Z, T) array, got {array.ndim} dimensions {array.shape}; "
                "medidiff denoises 3D volumes and 4D series"
            )
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got shape {aff.shape}")
        meta = VolumeMeta(affine=aff, original_dtype=str(array.dtype), modality=modality)
        return cls(np.ascontiguousarray(data, dtype=np.float32), meta)

    def to_array(self) -> np.ndarray:
        """Back to NIfTI axis order: ``(X, Y, Z)`` for one volume, ``(X, Y, Z, T)`` otherwise."""
        return self.data[0] if self.n_volumes == 1 else np.moveaxis(self.data, 0, -1)

    def to_metatensor(self) -> Any:
        """A MONAI ``MetaTensor`` (C, X, Y, Z) whose ``affine`` is ours, so MONAI transforms apply."""
        import torch
        from monai.data import MetaTensor

        return MetaTensor(
            self.data.copy(),
            affine=torch.as_tensor(self.meta.affine.copy()),
            meta={"filename_or_obj": self.meta.source_path, "space": "RAS", "medidiff_meta": self.meta},
        )

    @classmethod
    def from_metatensor(cls, tensor: Any, like: Volume | None = None) -> Volume:
        """Build a Volume from a MONAI ``MetaTensor``; geometry comes from ``like`` when given."""
        data = tensor.detach().cpu().numpy().astype(np.float32)
        if data.ndim == 3:
            data = data[None]
        if data.ndim != 4:
            raise InputError(
                f"expected a (C, X, Y, Z) or (X, Y, Z) tensor, got shape {tuple(data.shape)}; "
                "give one volume at a time (a batch axis is not supported)"
            )
        if like is not None:
            return like.with_data(data)
        meta = tensor.meta.get("medidiff_meta") if hasattr(tensor, "meta") else None
        affine = np.asarray(tensor.affine, dtype=np.float64)
        if meta is None:
            meta = VolumeMeta(affine=affine)
        else:
            meta = meta.replace(affine=affine)
        return cls(data, meta)
