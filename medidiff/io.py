"""Reading scans into a :class:`~medidiff.volume.Volume` and writing them back as NIfTI.

Formats read: NIfTI-1/2 (``.nii``, ``.nii.gz``; 2D to 7D), DICOM series (a folder, searched
recursively, or one file of the series: see :mod:`medidiff.dicom`), NRRD (``.nrrd``, ``.nhdr``) and
MetaImage (``.mha``, ``.mhd``). Only NIfTI is written.

Geometry: ``meta.affine`` maps voxel indices to RAS+ millimetres whatever the source (DICOM, NRRD and
MetaImage store LPS, which is converted exactly); voxels stay in the file's order, never reoriented.

Every problem with an input raises :class:`~medidiff.errors.InputError` with one line naming the file,
the problem and the fix; backend exceptions (nibabel, SimpleITK, pydicom, gzip) never escape.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import re
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medidiff.errors import InputError, MedidiffError
from medidiff.files import atomic_path, check_output
from medidiff.volume import Modality, Volume, VolumeMeta

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, a DICOM file or a folder of DICOM files"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
COMPRESS_LEVEL = 1  # nibabel's default: fast, and most of the size gain of level 9 on scans
_DEFLATE_MAX_RATIO = 1032  # no gzip stream expands more than this
# integers beyond 2**24 are not all representable in float32, the Volume data type
_FLOAT32_EXACT_INT = 2**24
# attribute of a NIfTI header read here that holds (fingerprint of the float32 data, stored array)
# when float32 could not hold the stored values exactly, so an unchanged volume is still written
# back bit for bit
_STORED_ATTR = "_medidiff_stored"


# ------------------------------------------------------------------------------------------- public


def read_volume(path: str | os.PathLike[str], series: str | int | None = None) -> Volume:
    """Read a scan as a :class:`Volume` (data ``(C, X, Y, Z)`` float32, affine voxel -> RAS+ mm).

    Args:
        path: a NIfTI, NRRD or MetaImage file, a DICOM file, or a folder holding a DICOM series.
        series: for DICOM folders holding several series, the series to read: its index in the
            listing that the error message shows (``int`` or a string of digits) or its
            SeriesInstanceUID. Not allowed for other formats.

    Returns:
        The volume. ``meta.original_dtype`` is the stored dtype; ``meta.modality`` comes from the
        DICOM Modality tag (or a MetaImage modality field) and is None when unknown: see
        :func:`guess_modality`.

    Raises:
        InputError: the path is missing, unreadable, not a scan, damaged, or a DICOM series with a
            geometry hazard (missing or duplicate slices, uneven spacing, gantry tilt...).
    """
    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder; check the path")
    if src.is_file() and src.stat().st_size == 0:
        raise InputError(f"{src}: the file is empty (0 bytes); check that it was copied or written completely")
    kind = scan_format(src)
    if series is not None and kind != "dicom":
        raise InputError(f"{src}: --series only applies to DICOM folders; drop it for {kind} files")
    try:
        if kind == "dicom":
            from medidiff import dicom

            return dicom.read_dicom(src, series=series)
        if kind == "nifti":
            return _read_nifti(src)
        return _read_itk(src, kind)
    except MedidiffError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - backends raise anything; the user gets one line
        raise InputError(f"{src}: cannot be read as {kind} ({one_line(exc)}); check the file") from exc


def check_nifti_output(path: str | os.PathLike[str], force: bool = False) -> Path:
    """``path`` as a Path once it is known to be a NIfTI name that may be written (see ``check_output``)."""
    out = Path(path)
    if not out.name.lower().endswith(NIFTI_SUFFIXES):
        raise MedidiffError(f"{out}: medidiff writes NIfTI only; give an output name ending in .nii "
                            "or .nii.gz")
    return check_output(out, force)


def write_volume(volume: Volume, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write ``volume`` as NIfTI (``.nii`` or ``.nii.gz``), atomically.

    Geometry: the affine is written to sform and qform (qform only when the affine has no shear).
    A volume read from NIfTI keeps its header (codes, units, intent, extensions...) and, when the
    affine is unchanged, its sform/qform fields byte for byte. Other sources get codes 1 (scanner);
    in-memory arrays get 2 (aligned).

    Data type: a NIfTI source keeps its stored dtype and scl_slope/scl_inter whenever every value is
    exactly representable that way (so an unchanged volume round-trips bit for bit); otherwise the
    data are written as float32 without scaling, never rounded or clipped. Other sources: their
    integer dtype (e.g. int16 HU) when all values are integers within its range, else float32.

    Args:
        volume: the volume to write.
        path: output file ending in ``.nii`` or ``.nii.gz``; its folder must exist.
        force: overwrite an existing file.

    Returns:
        The output path.

    Raises:
        MedidiffError: the name is not NIfTI, the folder is missing, or the file exists without
            ``force`` (:class:`~medidiff.errors.OutputExistsError`).
    """
    out = check_nifti_output(path, force)
    with atomic_path(out, force=force) as tmp:
        write_nifti_file(volume, tmp)
    return out


def write_nifti_file(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Write ``volume`` as NIfTI to exactly ``path``, not atomically, with the rules of :func:`write_volume`.

    For callers that stage several files with :func:`medidiff.files.atomic_path` and rename them
    together; ``path`` must end in ``.nii`` or ``.nii.gz`` (a temporary name of ``atomic_path`` does).
    """
    header, raw = _to_nifti(volume)
    _write_nifti(Path(path), header, raw)


def guess_modality(volume: Volume) -> Modality:
    """Guess CT or MR from intensities, for volumes without a modality tag.

    CT in Hounsfield units has air at about -1000: the guess is CT when the minimum is at most -500
    and at least 1 % of the voxels lie in [-1100, -900] HU, or when at least 5 % of the voxels lie
    below -50 HU (fat, lung, air: this catches crops with little or no air). Magnitude MR has no
    negative values, and normalized MR (z-scores) none of that size. Anything else, including CT
    stored without its rescale intercept, is MR.
    """
    data = volume.data
    if data.size > 4_000_000:  # a regular subsample is plenty for a histogram question
        step = int(np.ceil((data.size / 4_000_000) ** (1 / 3)))
        data = data[:, ::step, ::step, ::step]
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return "MR"
    if np.count_nonzero(finite < -50) >= 0.05 * finite.size:
        return "CT"
    air = np.count_nonzero((finite >= -1100) & (finite <= -900)) / finite.size
    return "CT" if float(finite.min()) <= -500 and air >= 0.01 else "MR"


def scan_format(path: str | os.PathLike[str]) -> str:
    """The reader a path goes to: ``"nifti"``, ``"dicom"``, ``"nrrd"`` or ``"mha"``.

    Raises:
        InputError: the extension is not supported and the file is not DICOM.
    """
    src = Path(path)
    if src.is_dir():
        return "dicom"
    name = src.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "mha"
    if name.endswith(DICOM_SUFFIXES) or _has_dicom_preamble(src):
        return "dicom"
    if name.endswith((".hdr", ".img")):
        hint = "convert the Analyze/NIfTI pair to a single .nii file"
    elif name.endswith(".gz"):
        hint = "decompress it, or name it .nii.gz if it is a gzip-compressed NIfTI"
    else:
        hint = "convert it to NIfTI first"
    raise InputError(f"{src}: unsupported file type '{''.join(src.suffixes[-2:]) or src.name}'; medidiff "
                     f"reads {SUPPORTED}; {hint}")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A backend exception as one short line (SimpleITK messages span several lines)."""
    text = str(exc) or type(exc).__name__
    itk = re.search(r"ITK ERROR:[^:]*\):\s*(.+)", text)
    if itk:
        text = itk.group(1)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------- NIfTI


def _nibabel() -> Any:
    import nibabel

    return nibabel


@contextlib.contextmanager
def _nibabel_silenced() -> Iterator[None]:
    """nibabel prints header fixes ("qform_code 154 not valid; setting to 0") straight to stderr."""
    logger = _nibabel().imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_nifti(path: Path) -> Volume:
    nib = _nibabel()
    gz = path.name.lower().endswith(".gz")
    header_class = _nifti_header_class(path, gz)
    try:
        with _open(path, "rb", gz) as fobj, _nibabel_silenced():
            header = header_class.from_fileobj(fobj, check=True)  # the same fixes as nib.load
            dtype, shape = _checked_layout(path, header, gz)
            raw = nib.volumeutils.array_from_file(
                shape, dtype, fobj, offset=header.get_data_offset(), order="F", mmap=False
            )
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: the compressed data is truncated or damaged ({one_line(exc)}); "
                         "copy or download the file again") from exc
    except OSError as exc:
        if "Expected" in str(exc) and "bytes" in str(exc):
            raise InputError(f"{path}: the file is truncated (less voxel data than its header "
                             "declares); copy or download it again") from exc
        raise
    except nib.spatialimages.HeaderDataError as exc:
        raise InputError(f"{path}: invalid NIfTI header ({one_line(exc)}); the file is damaged or "
                         "not NIfTI") from exc
    slope, inter = _slope_inter(header)
    data = _decode(raw, slope, inter)
    exact = _exact_in_float32(raw, data, slope, inter)
    spatial = tuple(shape[:3]) + (1,) * (3 - min(len(shape), 3))
    n_volumes = int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
    data4 = np.reshape(data, spatial + (n_volumes,), order="F")
    volume_data = np.ascontiguousarray(np.moveaxis(data4, -1, 0))
    if not exact:
        warnings.warn(f"{path}: some stored values are not exactly representable in float32 and were "
                      "rounded in memory (unchanged data are still written back exactly)", stacklevel=3)
        setattr(header, _STORED_ATTR, (_fingerprint(volume_data), raw))
    tags: dict[str, Any] = {}
    descrip = header["descrip"].item().decode("latin-1", "replace").strip("\x00 ")
    if descrip:
        tags["descrip"] = descrip
    meta = VolumeMeta(
        affine=np.asarray(header.get_best_affine(), dtype=np.float64),
        source_format="nifti",
        original_dtype=dtype.newbyteorder("=").name,
        modality=None,
        source_path=str(path),
        header=header,
        tags=tags,
    )
    return Volume(volume_data, meta)


def _nifti_header_class(path: Path, gz: bool) -> Any:
    nib = _nibabel()
    with open(path, "rb") as fobj:
        start = fobj.read(4)
    if gz:
        if start[:2] != b"\x1f\x8b":
            hint = "rename it to .nii" if len(start) == 4 and _sizeof_hdr(start) else "check the file"
            raise InputError(f"{path}: not gzip-compressed although named .gz (not a compressed NIfTI); "
                             f"{hint}")
        try:
            with gzip.open(path, "rb") as fobj:
                start = fobj.read(4)
        except (EOFError, zlib.error, OSError) as exc:
            raise InputError(f"{path}: the compressed data is truncated or damaged ({one_line(exc)}); "
                             "copy or download the file again") from exc
    size = _sizeof_hdr(start) if len(start) == 4 else None
    if size == 348:
        return nib.Nifti1Header
    if size == 540:
        return nib.Nifti2Header
    if not gz and start[:2] == b"\x1f\x8b":
        raise InputError(f"{path}: gzip-compressed although named .nii; rename it to .nii.gz")
    empty = " (the file is empty)" if not start else ""
    raise InputError(f"{path}: not a NIfTI file{empty} (no NIfTI-1/2 header); check the file or its "
                     "extension")


def _sizeof_hdr(start: bytes) -> int | None:
    for order in ("<", ">"):
        value = int(np.frombuffer(start, dtype=f"{order}i4")[0])
        if value in (348, 540):
            return value
    return None


def _checked_layout(path: Path, header: Any, gz: bool) -> tuple[np.dtype, tuple[int, ...]]:
    magic = bytes(header["magic"].item())
    if magic not in (b"n+1", b"n+2"):
        raise InputError(f"{path}: header magic {magic!r} is not a single-file NIfTI; "
                         "convert the .hdr/.img pair or Analyze file to .nii")
    dtype = np.dtype(header.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise InputError(f"{path}: voxel type {dtype} (RGB, complex or binary) is not supported; "
                         "store scalar intensities")
    shape = tuple(int(s) for s in header.get_data_shape())
    if not shape or min(shape) < 1:
        raise InputError(f"{path}: header declares an empty image {shape}; the file is damaged")
    needed = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if not gz and size < needed:
        raise InputError(f"{path}: the file is truncated ({size} bytes, its header declares {needed}); "
                         "copy or download it again")
    if gz and needed > size * _DEFLATE_MAX_RATIO + 1024:
        raise InputError(f"{path}: its header declares {needed} bytes of voxels, more than {size} "
                         "compressed bytes can hold; the file is damaged")
    return dtype, shape


def _slope_inter(header: Any) -> tuple[float, float]:
    """The scaling NIfTI readers apply: none when scl_slope is 0 or not finite."""
    slope = float(header["scl_slope"])
    inter = float(header["scl_inter"])
    if not np.isfinite(slope) or slope == 0:
        return 1.0, 0.0
    return slope, inter if np.isfinite(inter) else 0.0


def _decode(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Stored values to float32, scaled in float64 so each value is rounded once."""
    if slope == 1.0 and inter == 0.0:
        return raw.astype(np.float32)
    out = np.empty(raw.shape, dtype=np.float32, order="F")
    for index in _chunks(raw.shape):
        out[index] = raw[index].astype(np.float64) * slope + inter
    return out


def _encode(values: np.ndarray, dtype: np.dtype, slope: float, inter: float) -> np.ndarray | None:
    """Stored values that decode exactly to ``values`` (float32), or None if there are none."""
    dtype = np.dtype(dtype)
    if slope == 1.0 and inter == 0.0 and dtype.kind == "f" and dtype.itemsize == 4:
        return values.astype(dtype)  # float32 holds float32: no round trip through float64
    if slope == 1.0 and inter == 0.0:
        stored = values.astype(np.float64)
    else:
        stored = (values.astype(np.float64) - inter) / slope
    if dtype.kind in "iu":
        if not np.isfinite(stored).all():
            return None
        stored = np.rint(stored)
        info = np.iinfo(dtype)
        if stored.size and (stored.min() < info.min or stored.max() > info.max):
            return None
    raw = stored.astype(dtype)
    back = _decode(raw, slope, inter)
    if not np.array_equal(back, values, equal_nan=True):
        return None
    return raw


def _exact_in_float32(raw: np.ndarray, data: np.ndarray, slope: float, inter: float) -> bool:
    kind, size = raw.dtype.kind, raw.dtype.itemsize
    if slope == 1.0 and inter == 0.0:
        if kind == "f" and size <= 4 or kind in "iu" and size <= 2:
            return True
        if kind in "iu":
            return raw.size == 0 or max(abs(int(raw.min())), abs(int(raw.max()))) <= _FLOAT32_EXACT_INT
    encoded = _encode(data, raw.dtype, slope, inter)
    return encoded is not None and np.array_equal(encoded, raw, equal_nan=True)


def _fingerprint(data: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16)
    return f"{data.shape}{data.dtype}{digest.hexdigest()}"


def _chunks(shape: tuple[int, ...]) -> list[tuple[Any, ...]]:
    if len(shape) < 3:
        return [tuple(slice(None) for _ in shape)]
    return [(..., k) for k in range(shape[-1])]


def _to_nifti(volume: Volume) -> tuple[Any, np.ndarray]:
    """The NIfTI header and the (X, Y, Z, C) values to store, exactly castable to its dtype."""
    nib = _nibabel()
    meta = volume.meta
    affine = np.asarray(meta.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise MedidiffError(f"cannot write a volume whose affine is not a finite 4x4 matrix: "
                            f"{affine.tolist()}")
    data4 = np.moveaxis(volume.data, 0, -1)  # (X, Y, Z, C)
    source = meta.header if isinstance(meta.header, nib.nifti1.Nifti1Header) else None
    if source is not None:
        header = source.copy()
        slope, inter = _slope_inter(header)
        kept = getattr(source, _STORED_ATTR, None)
        encoded: np.ndarray | None
        if kept is not None and kept[0] == _fingerprint(volume.data):
            encoded = np.reshape(kept[1], data4.shape, order="F")
        else:
            encoded = _encode(data4, header.get_data_dtype(), slope, inter)
        if encoded is not None:
            raw = encoded
        else:  # new values (e.g. denoised) that the stored type cannot hold exactly
            raw = data4
            header.set_data_dtype(np.float32)
            header["scl_slope"], header["scl_inter"] = 1.0, 0.0
            header["cal_min"], header["cal_max"] = 0.0, 0.0
        header["magic"] = header.single_magic
        minimum = header.single_vox_offset + header.extensions.get_sizeondisk()
        if header["vox_offset"] < minimum:
            header["vox_offset"] = 0  # write_to sets the smallest valid offset
        header.set_data_shape(_stored_shape(header.get_data_shape(), data4.shape))
        if not np.array_equal(affine, header.get_best_affine()):
            scode = int(header["sform_code"]) or int(header["qform_code"]) or 2
            _set_geometry(header, affine, scode, int(header["qform_code"]) or scode)
    else:
        header = nib.Nifti1Header()
        dtype = _integer_dtype_for(data4, meta.original_dtype)
        raw = data4
        header.set_data_dtype(np.float32 if dtype is None else dtype)
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0
        header.set_data_shape(data4.shape[:3] if data4.shape[3] == 1 else data4.shape)
        code = 2 if meta.source_format == "array" else 1
        _set_geometry(header, affine, code, code)
        header.set_xyzt_units("mm", "sec")
        step = meta.header.get("step_4d") if isinstance(meta.header, dict) else None
        if data4.shape[3] > 1 and step is not None and np.isfinite(step) and step > 0:
            header["pixdim"][4] = step  # a 4D MetaImage or NRRD keeps the spacing of its 4th axis
    return header, raw  # F-order bytes of (X, Y, Z, C) are those of the header shape


def _integer_dtype_for(data: np.ndarray, original: str) -> np.dtype | None:
    try:
        dtype = np.dtype(original)
    except TypeError:
        return None
    if dtype.kind not in "iu" or dtype.itemsize > 4 or not np.isfinite(data).all():
        return None
    if data.size == 0:
        return dtype
    info = np.iinfo(dtype)
    if data.min() < info.min or data.max() > info.max or not np.array_equal(np.rint(data), data):
        return None
    if dtype.itemsize == 4 and max(abs(float(data.min())), abs(float(data.max()))) > _FLOAT32_EXACT_INT:
        return None
    return dtype


def _set_geometry(header: Any, affine: np.ndarray, sform_code: int, qform_code: int) -> None:
    header.set_sform(affine, code=sform_code)
    header["pixdim"][1:4] = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    linear = affine[:3, :3]
    gram = linear.T @ linear
    scale = max(float(np.abs(np.diag(gram)).max()), 1e-12)
    if np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * scale, rtol=0):
        header.set_qform(affine, code=qform_code)
    else:  # a quaternion cannot hold a shear: readers must use the sform
        header.set_qform(None, code=0)


def _stored_shape(original: tuple[int, ...], data_shape: tuple[int, ...]) -> tuple[int, ...]:
    spatial, n_volumes = tuple(data_shape[:3]), data_shape[3]
    padded = tuple(original[:3]) + (1,) * (3 - min(len(original), 3))
    extra = int(np.prod(original[3:], dtype=np.int64)) if len(original) > 3 else 1
    if padded == spatial and extra == n_volumes:
        return tuple(int(s) for s in original)
    return spatial if n_volumes == 1 else tuple(data_shape)


@contextlib.contextmanager
def _open(path: Path, mode: str, gz: bool) -> Iterator[Any]:
    """A file object; gzip decided by the caller (names are matched case-insensitively)."""
    with open(path, mode) as raw:
        if not gz:
            yield raw
            return
        # mtime=0 and no name in the gzip header: the same volume always gives the same bytes
        with gzip.GzipFile(filename="", mode=mode, fileobj=raw, compresslevel=COMPRESS_LEVEL, mtime=0) as fobj:
            yield fobj


def _write_nifti(path: Path, header: Any, raw: np.ndarray) -> None:
    nib = _nibabel()
    dtype = header.get_data_dtype()
    gz = path.name.lower().endswith(".gz")
    with _open(path, "wb", gz) as fobj:
        header.write_to(fobj)
        nib.volumeutils.seek_tell(fobj, header.get_data_offset(), write0=True)
        for index in _chunks(raw.shape):
            fobj.write(np.asarray(raw[index], dtype=dtype).tobytes(order="F"))


# ------------------------------------------------------------------------------------------- ITK


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """Discard what C++ libraries print to file descriptor 2; the exception says it in one line."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()  # what Python buffered for stderr still goes out
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_itk(path: Path, kind: str) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _c_stderr_silenced():  # MetaIO writes "data not read completely" straight to fd 2
            image = reader.Execute()
    except RuntimeError as exc:
        hint = " (is its data file beside it?)" if path.suffix.lower() in (".mhd", ".nhdr") else ""
        raise InputError(f"{path}: cannot be read as {kind} ({one_line(exc)}){hint}; check the file") from exc
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0:
        raise InputError(f"{path}: header declares an empty image {image.GetSize()}; the file is damaged")
    if array.dtype.kind not in "iuf":
        raise InputError(f"{path}: voxel type {image.GetPixelIDTypeAsString()} is not supported; store "
                         "scalar intensities")
    if dim > 4 or (dim == 4 and components > 1):
        raise InputError(f"{path}: {dim}D image with {components} components per voxel is not supported; "
                         "store a 3D or 4D scalar image")
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    step = float(spacing[3]) if dim == 4 else None  # the 4th axis's spacing (time or volume step)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 4:
        if np.abs(direction[:3, 3]).max() > 1e-6 or np.abs(direction[3, :3]).max() > 1e-6:
            raise InputError(f"{path}: the 4th axis mixes with space in its direction matrix; "
                             "store a separable 4D image")
        direction, spacing, origin = direction[:3, :3], spacing[:3], origin[:3]
    space = min(dim, 3)
    lps = np.eye(4)
    lps[:space, :space] = direction[:3, :3] * spacing[:3]
    lps[:space, 3] = origin[:3]
    if components > 1:  # (Z, Y, X, C) or (Y, X, C)
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if dim == 2:  # (C, Y, X)
        data = np.ascontiguousarray(np.swapaxes(array, 1, 2)[..., None], dtype=np.float32)
    elif dim == 3:  # (C, Z, Y, X)
        data = np.ascontiguousarray(np.transpose(array, (0, 3, 2, 1)), dtype=np.float32)
    else:  # (1, T, Z, Y, X)
        data = np.ascontiguousarray(np.transpose(array[0], (0, 3, 2, 1)), dtype=np.float32)
    tags = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    tags = {key: value for key, value in tags.items() if len(value) < 200}
    modality = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR"}.get(tags.get("Modality", ""))
    meta = VolumeMeta(
        affine=LPS_TO_RAS @ lps,
        source_format=kind,
        original_dtype=array.dtype.newbyteorder("=").name,
        modality=modality,  # type: ignore[arg-type]
        source_path=str(path),
        header={"itk_pixel_type": image.GetPixelIDTypeAsString(), "dimension": dim, "step_4d": step},
        tags=tags,
    )
    return Volume(data, meta)


def looks_like_dicom(path: Path) -> bool:
    """True for a file with a DICOM suffix or the ``DICM`` preamble (no full parse)."""
    return path.name.lower().endswith(DICOM_SUFFIXES) or _has_dicom_preamble(path)


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fobj:
            fobj.seek(128)
            return fobj.read(4) == b"DICM"
    except OSError:
        return False
