"""What a scan holds: shape, geometry, stored type, intensities and modality (``medidiff info``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medidiff.io import guess_modality, read_volume

FORMAT_NAMES = {"nifti": "NIfTI", "dicom": "DICOM series", "nrrd": "NRRD", "mha": "MetaImage"}


def describe(path: str | os.PathLike[str], series: str | int | None = None) -> dict[str, Any]:
    """Read a scan and summarise it as a JSON-serialisable dict.

    Args:
        path: anything :func:`medidiff.io.read_volume` reads.
        series: DICOM series index or UID when a folder holds several.

    Returns:
        Keys: ``path``, ``format``, ``shape`` (X, Y, Z), ``n_volumes``, ``spacing`` (mm),
        ``orientation`` (axis codes such as ``"LPS"``), ``dtype`` (stored type), ``min``/``max``
        (None when no voxel is finite), ``modality`` (``"CT"``/``"MR"`` from a tag, else
        ``"guessed CT"``/``"guessed MR"``), ``affine`` (4x4 voxel -> RAS+ mm, as lists) and, for
        DICOM, ``series_description``, ``series_uid`` and ``echo_times`` when present.

    Raises:
        InputError: the scan cannot be read (see :func:`medidiff.io.read_volume`).
    """
    volume = read_volume(path, series=series)
    meta = volume.meta
    finite = np.isfinite(volume.data)
    low: float | None
    high: float | None
    if finite.all():
        low, high = float(volume.data.min()), float(volume.data.max())
    elif finite.any():
        low, high = float(volume.data[finite].min()), float(volume.data[finite].max())
    else:
        low = high = None
    desc: dict[str, Any] = {
        "path": str(path),
        "format": meta.source_format,
        "shape": list(volume.spatial_shape),
        "n_volumes": volume.n_volumes,
        "spacing": [round(s, 6) for s in meta.spacing],
        "orientation": meta.orientation,
        "dtype": meta.original_dtype,
        "min": low,
        "max": high,
        "modality": meta.modality or f"guessed {guess_modality(volume)}",
        "affine": [[round(float(v), 6) for v in row] for row in meta.affine],
    }
    if meta.source_format == "dicom":
        for key, tag in (("series_description", "SeriesDescription"), ("series_uid", "SeriesInstanceUID")):
            desc[key] = meta.tags.get(tag)
        echo = meta.tags.get("EchoTime")
        if echo is not None:
            desc["echo_times"] = echo if isinstance(echo, list) else [echo]
        if meta.tags.get("mosaic"):
            desc["mosaic"] = True
    return desc


def format_description(desc: dict[str, Any]) -> str:
    """The dict from :func:`describe` as aligned human-readable lines."""
    shape = " x ".join(str(s) for s in desc["shape"])
    n = desc["n_volumes"]
    spacing = " x ".join(f"{s:g}" for s in desc["spacing"])
    values = "no finite values" if desc["min"] is None else f"{desc['min']:g} .. {desc['max']:g}"
    rows = [
        ("path", desc["path"]),
        ("format", FORMAT_NAMES.get(desc["format"], desc["format"])),
        ("shape", f"{shape} ({n} volume{'s' if n != 1 else ''})"),
        ("spacing", f"{spacing} mm"),
        ("orientation", desc["orientation"]),
        ("stored type", desc["dtype"]),
        ("values", values),
        ("modality", desc["modality"]),
    ]
    if desc.get("series_description") is not None or desc.get("series_uid") is not None:
        name, uid = desc.get("series_description") or "", desc.get("series_uid") or ""
        rows.append(("series", f"'{name}' {uid}".strip()))
    if desc.get("echo_times"):
        rows.append(("echo times", ", ".join(f"{t:g}" for t in desc["echo_times"]) + " ms"))
    if desc.get("mosaic"):
        rows.append(("mosaic", "Siemens mosaic, demosaiced"))
    width = max(len(k) for k, _ in rows) + 1
    lines = [f"{k + ':':<{width}} {v}" for k, v in rows]
    lines.append(f"{'affine:':<{width}} voxel -> RAS+ mm")
    lines.extend(" " * (width + 1) + "  ".join(f"{v:10.4f}" for v in row) for row in desc["affine"])
    return "\n".join(lines)
