"""Synthetic scans for the I/O tests: NIfTI with oblique affines, DICOM series with known geometry."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A 3x3 rotation from three angles in radians."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_lps_affine(spacing: Sequence[float] = (0.9, 1.1, 2.5)) -> np.ndarray:
    """A RAS affine of an oblique scan stored in LPS-like voxel order (x -> left, y -> posterior)."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation(0.2, -0.15, 0.3) @ np.diag(spacing)
    affine[:3, 3] = [91.5, 120.25, -72.0]
    return affine


# ------------------------------------------------------------------------------------------- DICOM


def dicom_geometry(
    origin: Sequence[float] = (-80.5, -95.25, 40.0),
    angles: tuple[float, float, float] = (0.25, 0.1, -0.2),
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
) -> dict[str, np.ndarray | tuple[float, float] | float]:
    """Oblique DICOM geometry in LPS: row/column cosines, normal, spacing, first position."""
    r = rotation(*angles)
    return {
        "row": r[:, 0], "col": r[:, 1], "normal": r[:, 2], "origin": np.asarray(origin, dtype=float),
        "pixel_spacing": pixel_spacing, "slice_spacing": slice_spacing,
    }


def expected_ras_affine(geometry: dict) -> np.ndarray:
    """The voxel (column, row, slice) -> RAS affine a correct reader must return."""
    row_sp, col_sp = geometry["pixel_spacing"]
    lps = np.eye(4)
    lps[:3, 0] = geometry["row"] * col_sp
    lps[:3, 1] = geometry["col"] * row_sp
    lps[:3, 2] = geometry["normal"] * geometry["slice_spacing"]
    lps[:3, 3] = geometry["origin"]
    return LPS_TO_RAS @ lps


def new_dataset(sop_class_uid: str) -> Any:
    """An empty explicit-little-endian DICOM dataset with its file meta and a fresh SOP instance UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, meta.MediaStorageSOPInstanceUID
    return ds


def write_dicom_series(
    folder: Path,
    stored: np.ndarray,
    geometry: dict,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = 0.0,
    series_uid: str | None = None,
    description: str = "synthetic",
    series_number: int = 1,
    echo_time: float | None = None,
    positions: Sequence[Sequence[float]] | None = None,
    orientations: Sequence[Sequence[float]] | None = None,
    transfer_syntax: str | None = None,
    shuffle_seed: int | None = 0,
    name_prefix: str = "",
    instance_offset: int = 0,
    signed: bool = True,
) -> list[Path]:
    """Write ``stored`` (Z, rows, columns) int16 (uint16 if not ``signed``) one file per slice, names shuffled.

    Positions default to ``origin + k * slice_spacing * normal``; give ``positions`` to break them.
    """
    import pydicom
    from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    n = stored.shape[0]
    if positions is None:
        step = geometry["slice_spacing"] * geometry["normal"]
        positions = [geometry["origin"] + k * step for k in range(n)]
    iop = [*geometry["row"], *geometry["col"]]
    order = np.arange(n)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(n)
    paths = []
    for k in range(n):
        ds = new_dataset(CTImageStorage if modality == "CT" else MRImageStorage)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = "Test^Synthetic"
        ds.PatientID = "0"
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_offset + k + 1
        ds.Manufacturer = "medidiff-test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (orientations[k] if orientations else iop)]
        ds.PixelSpacing = [f"{v:.6f}" for v in geometry["pixel_spacing"]]
        ds.SliceThickness = f"{geometry['slice_spacing']:.4f}"
        if echo_time is not None:
            ds.EchoTime = f"{echo_time:g}"
        ds.RepetitionTime = "2000"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[k], dtype="<i2" if signed else "<u2").tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = folder / f"{name_prefix}IM{order[k]:04d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def stored_ramp(n_slices: int = 8, rows: int = 5, cols: int = 6, seed: int = 0) -> np.ndarray:
    """Distinct int16 values per voxel so that any mis-sorting or transposition shows."""
    rng = np.random.default_rng(seed)
    base = np.arange(n_slices * rows * cols, dtype=np.int16).reshape(n_slices, rows, cols) * 7
    return (base + rng.integers(0, 5, base.shape)).astype(np.int16)


# ------------------------------------------------------------------------------------------- mosaic


def csa_header(fields: dict[str, tuple[str, list[str]]]) -> bytes:
    """A Siemens CSA header (SV10 format) with the given ``name: (VR, values)`` fields."""
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(fields), 77)]
    for name, (vr, values) in fields.items():
        out.append(struct.pack("<64si4sii", name.encode(), len(values), vr.encode(), 0, len(values)) +
                   struct.pack("<i", 77))
        for value in values:
            raw = value.encode() + b"\x00"
            out.append(struct.pack("<4i", len(raw), len(raw), 77, len(raw)))
            out.append(raw + b"\x00" * (-len(raw) % 4))
    return b"".join(out)


def write_mosaic_series(
    folder: Path, volumes: np.ndarray, geometry: dict, *, normal_sign: float = 1.0
) -> tuple[list[Path], np.ndarray]:
    """Siemens mosaic files, one per time point of ``volumes`` (T, Z, rows, cols) int16.

    Returns the files and the expected RAS affine of the demosaiced (column, row, slice) grid.
    """
    import pydicom
    from pydicom.uid import MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    n_t, n_z, rows, cols = volumes.shape
    tiles = int(np.ceil(np.sqrt(n_z)))
    row_sp, col_sp = geometry["pixel_spacing"]
    normal = geometry["normal"] * normal_sign
    first = geometry["origin"]
    # Siemens stores the position of the whole mosaic image centred like a single slice
    ipp = first - geometry["row"] * col_sp * (cols * tiles - cols) / 2 - geometry["col"] * row_sp * (
        rows * tiles - rows) / 2
    csa = csa_header({
        "NumberOfImagesInMosaic": ("US", [str(n_z)]),
        "SliceNormalVector": ("FD", [f"{v:.8f}" for v in normal]),
    })
    series_uid = generate_uid()
    paths = []
    for t in range(n_t):
        mosaic = np.zeros((rows * tiles, cols * tiles), dtype=np.int16)
        for z in range(n_z):
            r, c = divmod(z, tiles)
            mosaic[r * rows:(r + 1) * rows, c * cols:(c + 1) * cols] = volumes[t, z]
        ds = new_dataset(MRImageStorage)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.PatientName, ds.PatientID = "Test^Mosaic", "0"
        ds.Modality, ds.Manufacturer = "MR", "SIEMENS"
        ds.SeriesDescription, ds.SeriesNumber = "ep2d_bold", 5
        ds.InstanceNumber, ds.AcquisitionNumber = t + 1, t + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*geometry["row"], *geometry["col"])]
        ds.PixelSpacing = [f"{v:.6f}" for v in geometry["pixel_spacing"]]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{geometry['slice_spacing']:.4f}"
        ds.EchoTime, ds.RepetitionTime = "30", "2000"
        ds.Rows, ds.Columns = mosaic.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        block.add_new(0x10, "OB", csa)
        ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
        ds.add_new((0x0019, 0x100A), "US", n_z)
        ds.PixelData = mosaic.astype("<i2").tobytes()
        path = folder / f"MOSAIC{t:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = geometry["row"] * col_sp, geometry["col"] * row_sp
    lps[:3, 2], lps[:3, 3] = normal * geometry["slice_spacing"], first
    return paths, LPS_TO_RAS @ lps


# ------------------------------------------------------------------------------------------- enhanced


def write_enhanced_mr(
    path: Path,
    volumes: dict[float, np.ndarray],
    geometry: dict,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    positions: Sequence[Sequence[float]] | None = None,
    shuffle_seed: int | None = 0,
) -> Path:
    """One enhanced MR file holding ``{echo time: (Z, rows, cols) int16}``; frames stored shuffled."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import EnhancedMRImageStorage, generate_uid

    frames = []
    for te, stored in volumes.items():
        for z in range(stored.shape[0]):
            position = positions[z] if positions is not None else (
                geometry["origin"] + z * geometry["slice_spacing"] * geometry["normal"])
            frames.append((te, z, position, stored[z]))
    if shuffle_seed is not None:
        frames = [frames[i] for i in np.random.default_rng(shuffle_seed).permutation(len(frames))]
    ds = new_dataset(EnhancedMRImageStorage)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", generate_uid()
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientName, ds.PatientID = "Test^Enhanced", "0"
    ds.Modality, ds.Manufacturer, ds.SeriesDescription, ds.SeriesNumber = "MR", "Philips", "mFFE", 7
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in (*geometry["row"], *geometry["col"])]
    measures = Dataset()
    measures.PixelSpacing = [f"{v:.6f}" for v in geometry["pixel_spacing"]]
    measures.SliceThickness = f"{geometry['slice_spacing']:.4f}"
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    transform.RescaleType = "US"
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for te, z, position, _ in frames:
        item = Dataset()
        content = Dataset()
        content.InStackPositionNumber, content.StackID = z + 1, "1"
        content.DimensionIndexValues = [z + 1, sorted(volumes).index(te) + 1]
        plane = Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in position]
        echo = Dataset()
        echo.EffectiveEchoTime = te
        item.FrameContentSequence = DicomSequence([content])
        item.PlanePositionSequence = DicomSequence([plane])
        item.MREchoSequence = DicomSequence([echo])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(frames)
    first = next(iter(volumes.values()))
    ds.Rows, ds.Columns = int(first.shape[1]), int(first.shape[2])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.stack([f[3] for f in frames]).astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
