"""DICOM series: grouping with SimpleITK/GDCM, geometry checks, pixels with pydicom.

Rules (see ``docs/io.md``):

* Series are found with ``ImageSeriesReader.GetGDCMSeriesIDs`` in every sub-folder and their files
  listed with ``GetGDCMSeriesFileNames`` (where GDCM cannot scan a folder, by each file's
  SeriesInstanceUID read with pydicom); slices are then ordered by their position along the slice
  normal (``ImagePositionPatient`` projected on row x column cosines), never by file name.
* Rescale slope/intercept (or a modality LUT) is applied per slice, so CT is in HU.
* Voxel order: X = column index, Y = row index, Z = slice, ascending along the normal. The affine is
  built from the tags in LPS and converted to RAS.
* Refused with an :class:`InputError` naming the hazard: missing slices, duplicate positions,
  uneven spacing, mixed orientations or image sizes, gantry tilt (sheared slices), colour images,
  missing geometry tags, multi-frame files without per-frame geometry. Handled: enhanced multi-frame
  files (read frame by frame), several echo times in one series (a 4D volume ordered by echo time)
  and Siemens mosaics (one 3D volume per file, 4D for several files).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.errors import InputError
from medidiff.volume import Volume, VolumeMeta

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SAME_POSITION_MM = 0.01  # slices closer than this along the normal share a position
UNEVEN_TOLERANCE = 0.01  # largest deviation from a regular grid, as a fraction of the spacing
UNEVEN_MIN_MM = 0.02  # ... but never below this (positions are rounded decimal strings)
TILT_TOLERANCE = 0.05  # largest in-plane drift across the series, as a fraction of a pixel
ORIENTATION_TOLERANCE = 1e-4
TAG_KEYWORDS = (
    "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "Modality", "Manufacturer",
    "ManufacturerModelName", "MagneticFieldStrength", "EchoTime", "RepetitionTime", "InversionTime",
    "FlipAngle", "SliceThickness", "SpacingBetweenSlices", "KVP", "ConvolutionKernel",
    "BodyPartExamined", "ImageType", "ProtocolName", "SequenceName", "StudyDescription",
)
_VOLUME_TAGS = ("AcquisitionNumber", "TemporalPositionIdentifier", "TemporalPositionIndex", "StackID",
                "TriggerTime", "DiffusionBValue", "InversionTime", "ImageType", "EchoNumbers",
                "AcquisitionTime")


Headers = list[tuple[str, Any]]  # (file, dataset) per slice; frames of one file share the file


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a folder, as listed to the user."""

    index: int
    uid: str
    description: str
    modality: str
    number: int | None
    files: tuple[str, ...]
    n_images: int  # files x frames per file
    not_a_volume: str = ""  # why the series cannot be a 3D scan ("a localizer", "one image"), else ""

    def summary(self) -> str:
        desc = self.description or "no description"
        note = f" ({self.not_a_volume})" if self.not_a_volume else ""
        return f"[{self.index}] {self.uid} '{desc}' {self.n_images} slices {self.modality or '?'}{note}"


def find_series(folder: str | os.PathLike[str], recursive: bool = True) -> list[SeriesInfo]:
    """All DICOM series under ``folder``, ordered by SeriesNumber then UID (the listing's indices)."""
    return _series_infos(_gdcm_groups(Path(folder), recursive))


def _series_infos(groups: dict[str, list[str]]) -> list[SeriesInfo]:
    infos = []
    for uid, files in groups.items():
        ds = _header(files[0])
        with _quiet():  # pydicom converts (and warns about) values when they are read
            number = _optional_int(ds.get("SeriesNumber"))
            n_images = len(files) * (_optional_int(ds.get("NumberOfFrames")) or 1)
            infos.append((
                number,
                uid,
                str(ds.get("SeriesDescription", "") or "").strip(),
                str(ds.get("Modality", "") or ""),
                tuple(files),
                n_images,
                _not_a_volume(ds, n_images),
            ))
    infos.sort(key=lambda t: (t[0] is None, t[0] or 0, t[1]))
    return [SeriesInfo(i, *info[1:4], info[0], *info[4:]) for i, info in enumerate(infos)]


def read_dicom(path: str | os.PathLike[str], series: str | int | None = None) -> Volume:
    """Read one DICOM series from a folder (searched recursively) or the series of one DICOM file.

    Args:
        path: folder, or one file of the series (its own folder is then searched, not recursively).
        series: index in the listing or SeriesInstanceUID; required when a folder holds several
            series, unless all but one are localizers or single images (that one is then read, with a
            warning naming the others). With a file, it picks among the series of the file's folder.

    Raises:
        InputError: no series, an ambiguous or unknown ``series``, or a geometry hazard.
    """
    src = Path(path)
    if src.is_file() and series is not None:  # a file and a choice: choose among its folder's series
        return _read_series(src.parent, _pick(src.parent, find_series(src.parent, recursive=False), series))
    if src.is_file():
        target = src.resolve()
        own = {uid: files for uid, files in _gdcm_groups(src.parent, recursive=False).items()
               if any(Path(f).resolve() == target for f in files)}
        chosen = _series_infos(own)
        if not chosen:
            raise InputError(f"{src}: not a readable DICOM image (no series found for it); check the file")
        return _read_series(src, chosen[0])
    infos = find_series(src)
    if not infos:
        n_files = sum(len(f) for _, _, f in os.walk(src))
        raise InputError(f"{src}: no DICOM image series found ({n_files} files searched recursively); "
                         "give a folder of DICOM files, or a NIfTI/NRRD/MHA file")
    return _read_series(src, _pick(src, infos, series))


def _not_a_volume(ds: Any, n_images: int) -> str:
    """Why a series (its first header, its image count) cannot be a 3D scan, or "" if it may be one."""
    if "LOCALIZER" in _image_type(ds):
        return "a localizer"
    if n_images == 1 and not _is_mosaic(ds):
        return "one image"
    return ""


def _pick(folder: Path, infos: list[SeriesInfo], series: str | int | None) -> SeriesInfo:
    listing = "; ".join(s.summary() for s in infos)
    if series is None:
        if len(infos) == 1:
            return infos[0]
        volumes = [s for s in infos if not s.not_a_volume]
        if len(volumes) == 1:  # a scan beside its localizers (a scanner's usual export): read the scan
            skipped = ", ".join(f"[{s.index}] '{s.description or 'no description'}' ({s.not_a_volume})"
                                for s in infos if s.not_a_volume)
            log.warning("%s: reading series %s; skipped %s (choose another with --series)",
                        folder, volumes[0].summary(), skipped)
            return volumes[0]
        raise InputError(f"{folder}: holds {len(infos)} DICOM series; choose one with --series INDEX or "
                         f"UID (series= in Python): {listing}")
    key = str(series).strip()
    if key.isdigit():
        index = int(key)
        if index < len(infos):
            return infos[index]
        raise InputError(f"{folder}: no series index {index}; choose one of: {listing}")
    for info in infos:
        if info.uid == key:
            return info
    raise InputError(f"{folder}: no series with UID {key}; choose one of: {listing}")


# ------------------------------------------------------------------------------------------- reading


def _read_series(src: Path, info: SeriesInfo) -> Volume:
    with _quiet():  # pydicom warns about malformed values as they are read; the checks below decide
        return _read_series_quietly(src, info)


def _read_series_quietly(src: Path, info: SeriesInfo) -> Volume:
    headers = _unique_instances([(f, _header(f)) for f in info.files])
    first = headers[0][1]
    label = f"{src} (series {info.index} '{info.description}')"
    photometric = str(first.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(first.get("SamplesPerPixel", 1) or 1) != 1 or not photometric.startswith("MONOCHROME"):
        raise InputError(f"{label}: colour image ({photometric}); medidiff reads greyscale scans only")
    frames = max(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in headers)
    enhanced = "PerFrameFunctionalGroupsSequence" in first
    if _is_mosaic(first):
        data, affine, extra = _read_mosaic(label, headers)
    elif enhanced:
        data, affine, extra = _read_slices(label, [rec for f, ds in headers for rec in _frames(label, f, ds)])
    elif frames > 1:
        raise InputError(f"{label}: multi-frame DICOM without per-frame geometry ({frames} frames per "
                         "file) is not supported; convert it with dcm2niix and pass the NIfTI")
    else:
        data, affine, extra = _read_slices(label, headers)
    tags = _tags(first)
    tags.update(extra)
    modality = str(first.get("Modality", "") or "")
    meta = VolumeMeta(
        affine=LPS_TO_RAS @ affine,
        source_format="dicom",
        original_dtype=_original_dtype(first, data),
        modality=modality if modality in ("MR", "CT") else None,  # type: ignore[arg-type]
        source_path=str(src),
        header={"files": [f for f, _ in headers], **tags},
        tags=tags,
    )
    return Volume(data, meta)


def _read_slices(label: str, headers: Headers) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Classic one-slice-per-file series -> (C, X, Y, Z) data, LPS affine, extra tags."""
    needed = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    missing = [Path(f).name for f, ds in headers if not all(k in ds for k in needed)]
    if missing:
        raise InputError(f"{label}: {len(missing)} file(s) (e.g. {missing[0]}) lack ImagePositionPatient/"
                         "ImageOrientationPatient/PixelSpacing, so the geometry is unknown; "
                         "export the series with its geometry tags")
    _check_uniform(label, headers)
    first = headers[0][1]
    row, col = _floats(first.ImageOrientationPatient, 6)[:3], _floats(first.ImageOrientationPatient, 6)[3:]
    normal = np.cross(row, col)
    row_spacing, col_spacing = _floats(first.PixelSpacing, 2)
    echoes = _echo_groups(label, headers)
    ordered: list[Headers] = []
    step = 0.0
    first_position = np.zeros(3)
    for echo, group in echoes:
        name = label if echo is None else f"{label}, echo time {echo:g} ms"
        group, step, first_position = _order_slices(name, group, normal, min(row_spacing, col_spacing))
        if ordered and (len(group) != len(ordered[0]) or not np.allclose(
                [_position(ds) for _, ds in group], [_position(ds) for _, ds in ordered[0]],
                atol=SAME_POSITION_MM)):
            raise InputError(f"{name}: the echoes cover different slice positions; export each echo as "
                             "its own series")
        ordered.append(group)
    n_slices = len(ordered[0])
    if n_slices == 1:
        step = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing  # X runs along a row: column index
    affine[:3, 1] = col * row_spacing  # Y runs down a column: row index
    affine[:3, 2] = normal * step
    affine[:3, 3] = first_position
    rows, cols = int(first.Rows), int(first.Columns)
    _check_pixel_bytes(label, headers, len(ordered) * n_slices * rows * cols)
    data = np.empty((len(ordered), cols, rows, n_slices), dtype=np.float32)
    decoded: dict[str, np.ndarray] = {}  # the frames of the multi-frame file being read
    for c, group in enumerate(ordered):
        for z, (path, ds) in enumerate(group):
            frame = getattr(ds, "_medidiff_frame", None)
            if frame is None:
                data[c, :, :, z] = _pixels(label, path).T
                continue
            if path not in decoded:
                decoded = {path: _stored_frames(label, path)}
            slope = float(ds.get("RescaleSlope", 1) or 1)
            data[c, :, :, z] = (decoded[path][frame] * slope + float(ds.get("RescaleIntercept", 0) or 0)).T
    extra: dict[str, Any] = {"n_files": len({path for path, _ in headers})}
    if len(echoes) > 1:
        extra["EchoTime"] = [echo for echo, _ in echoes]
    elif "EchoTime" in first:
        extra["EchoTime"] = float(first.EchoTime)
    return data, affine, extra


def _check_pixel_bytes(label: str, headers: Headers, n_values: int) -> None:
    """Refuse headers that declare far more pixels than the files can hold, before allocating.

    A damaged Rows/Columns (up to 65535 x 65535) must not make the reader allocate gigabytes, nor
    let a lenient decoder pad a few bytes into a large image. Uncompressed pixel data must fit in
    the files; compressed data may be up to 10000 times smaller.
    """
    first = headers[0][1]
    bits = int(first.get("BitsAllocated", 16) or 16)
    samples = int(first.get("SamplesPerPixel", 1) or 1)
    declared = n_values * max(bits, 1) * max(samples, 1) // 8
    stored = sum(os.path.getsize(path) for path in {path for path, _ in headers})
    syntax = getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", None)
    compressed = syntax is None or bool(getattr(syntax, "is_compressed", True) or getattr(syntax, "is_deflated", True))
    if declared > stored * (10000 if compressed else 1) + 1024:
        raise InputError(f"{label}: the headers declare {declared} bytes of pixel data but the files hold "
                         f"{stored} bytes; the series is damaged or incomplete")


def _check_uniform(label: str, headers: Headers) -> None:
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"{label}: mixed image sizes {sorted(sizes)} in one series; export the series again "
                         "or pick another")
    orientations = [_floats(ds.ImageOrientationPatient, 6) for _, ds in headers]
    distinct: list[np.ndarray] = []
    for o in orientations:
        if not any(np.abs(o - d).max() <= ORIENTATION_TOLERANCE for d in distinct):
            distinct.append(o)
    if len(distinct) > 1:
        raise InputError(f"{label}: mixed slice orientations ({len(distinct)} different "
                         "ImageOrientationPatient values, e.g. a localizer); pick a series with one "
                         "orientation")
    row, col = distinct[0][:3], distinct[0][3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(f"{label}: ImageOrientationPatient {distinct[0].tolist()} is not two unit "
                         "orthogonal vectors; the file is damaged")
    spacings = np.array([_floats(ds.PixelSpacing, 2) for _, ds in headers])
    if (spacings <= 0).any() or np.abs(spacings - spacings[0]).max() > 1e-4 * spacings[0].max():
        raise InputError(f"{label}: PixelSpacing is not positive or differs between slices; export the "
                         "series again")


def _echo_groups(label: str, headers: Headers) -> list[tuple[float | None, Headers]]:
    """Split by EchoTime (several values = a multi-echo series), ordered by echo time."""
    groups: dict[float | None, Headers] = {}
    for f, ds in headers:
        te = ds.get("EchoTime")
        key = round(float(te), 4) if te not in (None, "") else None
        groups.setdefault(key, []).append((f, ds))
    if len(groups) == 1:
        return [(None, headers)]
    if None in groups:
        raise InputError(f"{label}: some slices have an EchoTime and some do not; export the series again")
    return sorted(groups.items(), key=lambda kv: kv[0])  # type: ignore[arg-type, return-value]


def _order_slices(
    label: str, group: Headers, normal: np.ndarray, pixel: float
) -> tuple[Headers, float, np.ndarray]:
    """Sort by position along the normal and refuse every irregular stack. Returns (slices, step, origin)."""
    positions = np.array([_position(ds) for _, ds in group])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    group = [group[i] for i in order]
    positions, along = positions[order], along[order]
    if len(group) == 1:
        return group, 0.0, positions[0]
    gaps = np.diff(along)
    same = np.flatnonzero(gaps < SAME_POSITION_MM)
    if same.size:
        differ = _differing_tags([group[i][1] for i in same] + [group[i + 1][1] for i in same])
        what = (f"they differ in {', '.join(differ)}: several volumes in one series" if differ
                else "repeated or copied files")
        n_involved = len(set(same.tolist()) | set((same + 1).tolist()))
        raise InputError(f"{label}: duplicate slice positions ({n_involved} slices share a position with "
                         f"another, e.g. at {along[same[0]]:.2f} mm; {what}); "
                         "export each volume as its own series or remove the duplicates")
    spacing = float(np.median(gaps))
    big = np.flatnonzero(gaps > 1.5 * spacing)
    if big.size:
        k = big[0]
        missing = int(round(gaps[k] / spacing)) - 1
        raise InputError(f"{label}: missing slices: a gap of {gaps[k]:.3g} mm between positions "
                         f"{along[k]:.2f} and {along[k + 1]:.2f} mm where the spacing is {spacing:.3g} mm "
                         f"(about {max(missing, 1)} slice(s) missing, {len(big)} gap(s)); find the "
                         "missing files")
    step = float((along[-1] - along[0]) / (len(group) - 1))
    deviation = np.abs(along - (along[0] + step * np.arange(len(group)))).max()
    if deviation > max(UNEVEN_TOLERANCE * step, UNEVEN_MIN_MM):
        raise InputError(f"{label}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm); a NIfTI "
                         "grid cannot hold it: resample the series or pick another")
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    shift = float(np.linalg.norm(drift, axis=1).max())
    if shift > TILT_TOLERANCE * pixel:
        angle = math.degrees(math.atan2(shift, along[-1] - along[0]))
        raise InputError(f"{label}: gantry tilt of about {angle:.2f} degrees (slices are sheared: positions "
                         f"drift {shift:.2f} mm sideways); medidiff does not resample: convert with dcm2niix "
                         "(it corrects tilt) and pass the NIfTI")
    return group, step, positions[0]


def _pixels(label: str, path: str) -> np.ndarray:
    """One slice (rows, cols) in real-world units: modality LUT / rescale applied, float64."""
    pydicom = _pydicom()
    from pydicom.pixels import apply_modality_lut

    with _quiet():
        ds = pydicom.dcmread(path, force=True)
        try:
            array = ds.pixel_array
        except Exception:  # noqa: BLE001 - no pydicom decoder: let GDCM try
            return _pixels_gdcm(label, path)
        values = np.asarray(apply_modality_lut(array, ds), dtype=np.float64)
    if values.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(f"{label}: {Path(path).name} holds pixel data of shape {values.shape}, not "
                         f"{int(ds.Rows)}x{int(ds.Columns)}; the file is damaged")
    return values


def _pixels_gdcm(label: str, path: str) -> np.ndarray:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(path)  # GDCM applies the rescale itself
    except RuntimeError as exc:
        from medidiff.io import one_line

        raise InputError(f"{label}: cannot decode the pixels of {Path(path).name} ({one_line(exc)}); "
                         "decompress the series (e.g. with dcmdjpeg or gdcmconv) and try again") from exc
    values = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float64)
    return values.reshape(image.GetHeight(), image.GetWidth())


# ------------------------------------------------------------------------------------------- enhanced

# functional group -> (attribute in its item, attribute of the flattened per-frame record)
_FRAME_GROUPS = {
    "PlanePositionSequence": (("ImagePositionPatient", "ImagePositionPatient"),),
    "PlaneOrientationSequence": (("ImageOrientationPatient", "ImageOrientationPatient"),),
    "PixelMeasuresSequence": (("PixelSpacing", "PixelSpacing"), ("SliceThickness", "SliceThickness"),
                              ("SpacingBetweenSlices", "SpacingBetweenSlices")),
    "PixelValueTransformationSequence": (("RescaleSlope", "RescaleSlope"),
                                         ("RescaleIntercept", "RescaleIntercept")),
    "MREchoSequence": (("EffectiveEchoTime", "EchoTime"),),
    "FrameContentSequence": (("TemporalPositionIndex", "TemporalPositionIndex"), ("StackID", "StackID"),
                             ("FrameAcquisitionNumber", "AcquisitionNumber")),
    "MRDiffusionSequence": (("DiffusionBValue", "DiffusionBValue"),),
    "MRImageFrameTypeSequence": (("FrameType", "ImageType"),),
    "CTImageFrameTypeSequence": (("FrameType", "ImageType"),),
}


def _frames(label: str, path: str, ds: Any) -> Headers:
    """An enhanced multi-frame file as one record per frame, each with its geometry flattened."""
    pydicom = _pydicom()
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if len(per_frame) != n_frames:
        raise InputError(f"{label}: {Path(path).name} has {n_frames} frames but {len(per_frame)} per-frame "
                         "functional groups; the file is damaged")
    records = []
    for index, groups in enumerate(per_frame):
        record = pydicom.Dataset()
        record.Rows, record.Columns = ds.Rows, ds.Columns
        for sequence, fields in _FRAME_GROUPS.items():
            items = groups.get(sequence) or shared_seq[0].get(sequence) or [pydicom.Dataset()]
            for source, target in fields:
                if source in items[0]:
                    setattr(record, target, items[0][source].value)
        record._medidiff_frame = index
        records.append((path, record))
    return records


def _stored_frames(label: str, path: str) -> np.ndarray:
    """All frames of a multi-frame file as stored (frames, rows, cols), float64."""
    with _quiet():
        ds = _pydicom().dcmread(path, force=True)
        try:
            array = np.asarray(ds.pixel_array, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - any decoder failure
            from medidiff.io import one_line

            raise InputError(f"{label}: cannot decode the pixels of {Path(path).name} ({one_line(exc)}); "
                             "decompress it (e.g. with gdcmconv --raw) and try again") from exc
    return array.reshape(int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns))


# ------------------------------------------------------------------------------------------- mosaic


def _image_type(ds: Any) -> list[str]:
    """The ImageType values, upper case (empty when the tag is absent)."""
    return [str(v).upper() for v in (ds.get("ImageType") or [])]


def _is_mosaic(ds: Any) -> bool:
    return "MOSAIC" in _image_type(ds) or (0x0019, 0x100A) in ds


def _read_mosaic(label: str, headers: Headers) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Siemens mosaic: each file tiles one 3D volume; several files are time points (4D)."""
    csareader = _csareader()
    first = headers[0][1]
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if key not in first:
            raise InputError(f"{label}: Siemens mosaic without {key}; the geometry is unknown")
    n_images = _mosaic_count(first)
    csa = csareader.get_csa_header(first)
    csa_normal = csareader.get_slice_normal(csa) if csa else None
    if not n_images or csa_normal is None:
        raise InputError(f"{label}: Siemens mosaic without NumberOfImagesInMosaic or the CSA "
                         "SliceNormalVector (slice count or order unknown, anonymised?); convert with "
                         "dcm2niix")
    te = {round(float(ds.get("EchoTime", 0) or 0), 4) for _, ds in headers}
    if len(te) > 1:
        raise InputError(f"{label}: multi-echo mosaic ({len(te)} echo times); export one echo per series")
    keys = {(tuple(_floats(ds.ImagePositionPatient, 3)), tuple(_floats(ds.ImageOrientationPatient, 6)),
             int(ds.Rows), int(ds.Columns), _mosaic_count(ds)) for _, ds in headers}
    if len(keys) > 1:
        raise InputError(f"{label}: mosaic files with different geometry or slice counts in one series; "
                         "export each acquisition as its own series")
    rows, cols = int(first.Rows), int(first.Columns)
    tiles = math.ceil(math.sqrt(n_images))
    if rows % tiles or cols % tiles:
        raise InputError(f"{label}: a {rows}x{cols} mosaic cannot hold {n_images} tiles; the file is damaged")
    tile_rows, tile_cols = rows // tiles, cols // tiles
    orientation = _floats(first.ImageOrientationPatient, 6)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    dot = float(normal @ np.asarray(csa_normal, dtype=np.float64))
    if abs(abs(dot) - 1) > 1e-3:
        raise InputError(f"{label}: CSA SliceNormalVector disagrees with ImageOrientationPatient; convert "
                         "with dcm2niix")
    normal = normal if dot > 0 else -normal
    spacing = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 0)
    if spacing <= 0:
        raise InputError(f"{label}: mosaic without SpacingBetweenSlices or SliceThickness; the slice "
                         "spacing is unknown")
    row_spacing, col_spacing = _floats(first.PixelSpacing, 2)
    # ImagePositionPatient of a mosaic is that of the whole tiled image centred on the slice:
    # move it to the first voxel of a tile.
    origin = (_floats(first.ImagePositionPatient, 3) + row * col_spacing * (cols - tile_cols) / 2
              + col * row_spacing * (rows - tile_rows) / 2)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = (
        row * col_spacing, col * row_spacing, normal * spacing, origin)
    order = sorted(headers, key=lambda h: (_int(h[1], "AcquisitionNumber"), _int(h[1], "InstanceNumber")))
    _check_pixel_bytes(label, headers, len(order) * rows * cols)
    data = np.empty((len(order), tile_cols, tile_rows, n_images), dtype=np.float32)
    for t, (path, _) in enumerate(order):
        mosaic = _pixels(label, path)
        blocks = mosaic.reshape(tiles, tile_rows, tiles, tile_cols).transpose(1, 3, 0, 2)
        data[t] = blocks.reshape(tile_rows, tile_cols, tiles * tiles)[..., :n_images].transpose(1, 0, 2)
    return data, affine, {"n_files": len(headers), "mosaic": True}


def _mosaic_count(ds: Any) -> int:
    if (0x0019, 0x100A) in ds:
        value = ds[0x0019, 0x100A].value
        if isinstance(value, bytes):
            value = int.from_bytes(value[:2], "little") if len(value) >= 2 else 0
        return int(value)
    csareader = _csareader()
    csa = csareader.get_csa_header(ds)
    count = csareader.get_n_mosaic(csa) if csa else None
    return int(count or 0)


# ------------------------------------------------------------------------------------------- helpers


def _pydicom() -> Any:
    import pydicom

    return pydicom


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library warnings about odd tag values: the checks here decide what matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _csareader() -> Any:
    with _quiet():  # nibabel.nicom warns that its DICOM *wrappers* are experimental
        from nibabel.nicom import csareader
    return csareader


def _header(path: str) -> Any:
    with _quiet():
        return _pydicom().dcmread(path, stop_before_pixels=True, force=True)


def _gdcm_groups(root: Path, recursive: bool) -> dict[str, list[str]]:
    """SeriesInstanceUID -> files, with GDCM's grouping, folder by folder."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    groups: dict[str, list[str]] = {}
    try:
        folders = [root]
        if recursive:
            folders = [Path(d) for d, _, files in sorted(os.walk(root)) if files]
        for folder in folders:
            try:
                found = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid, False, False, False))
                         for uid in reader.GetGDCMSeriesIDs(str(folder))}
            except RuntimeError:  # GDCM gives up on the whole folder over one malformed file
                found = _header_groups(folder)
            for uid, files in found.items():
                groups.setdefault(uid, []).extend(files)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    return groups


def _header_groups(folder: Path) -> dict[str, list[str]]:
    """SeriesInstanceUID -> image files of one folder, read header by header with pydicom.

    The fallback when GDCM cannot scan the folder: files that are not DICOM, cannot be parsed, or
    hold no image (no Rows/Columns, e.g. structured reports and RT plans) are skipped.
    """
    groups: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = _header(str(path))
        except Exception:  # noqa: BLE001 - not DICOM or damaged: not part of any series
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid and ds.get("Rows") and ds.get("Columns"):
            groups.setdefault(uid, []).append(str(path))
    return groups


def _unique_instances(headers: Headers) -> Headers:
    """Drop exact copies of one instance (same SOPInstanceUID): they add nothing."""
    seen: set[str] = set()
    unique = []
    for f, ds in headers:
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid and uid in seen:
            continue
        seen.add(uid)
        unique.append((f, ds))
    return unique


def _optional_int(value: Any) -> int | None:
    """An integer tag's value, or None when it is absent or malformed (a listing detail, not geometry)."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> np.ndarray:
    out = np.array([float(v) for v in value], dtype=np.float64)
    if out.shape != (n,) or not np.isfinite(out).all():
        raise ValueError(f"expected {n} finite numbers in a geometry tag, found {list(value)}")
    return out


def _position(ds: Any) -> np.ndarray:
    return _floats(ds.ImagePositionPatient, 3)


def _int(ds: Any, keyword: str) -> int:
    return _optional_int(ds.get(keyword)) or 0


def _differing_tags(datasets: Sequence[Any]) -> list[str]:
    return [k for k in _VOLUME_TAGS if len({str(ds.get(k)) for ds in datasets}) > 1]


def _tags(ds: Any) -> dict[str, Any]:
    """Selected tags as JSON-friendly values (no patient identifiers)."""
    out: dict[str, Any] = {}
    for keyword in TAG_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            out[keyword] = [_plain(v) for v in value]
        else:
            out[keyword] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) if isinstance(value, int) else float(value)
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


def _original_dtype(first: Any, data: np.ndarray) -> str:
    """The stored integer type when the rescaled values still fit it, else int16/int32, else float32."""
    bits = int(first.get("BitsAllocated", 16) or 16)
    signed = int(first.get("PixelRepresentation", 0) or 0) == 1
    stored = np.dtype(f"{'int' if signed else 'uint'}{bits if bits in (8, 16, 32) else 16}")
    if data.size == 0 or not np.isfinite(data).all() or not np.array_equal(np.rint(data), data):
        return "float32"
    low, high = float(data.min()), float(data.max())
    for name in (stored.name, "int16", "int32"):
        info = np.iinfo(name)
        if info.min <= low and high <= info.max and max(abs(low), abs(high)) <= 2**24:
            return name
    return "float32"
