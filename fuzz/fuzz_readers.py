"""Fuzz target for the scan readers (NIfTI, NRRD, MetaImage, DICOM), for atheris or plain replay.

The first byte of an input picks the format (file suffix); the rest is the file. The target passes if
:func:`medidiff.io.read_volume` returns a well-formed volume or raises ``InputError`` with one line;
anything else (another exception, a hang, a crash in a native library) is a finding.

Usage::

    pip install atheris
    python fuzz/fuzz_readers.py --make-corpus fuzz/corpus       # valid seed files, one per format
    python fuzz/fuzz_readers.py fuzz/corpus -max_total_time=3600 -rss_limit_mb=4096
    python fuzz/fuzz_readers.py --replay crash-1234 fuzz/corpus/*  # re-run inputs without atheris

The short, CI-sized version of this run is ``tests/test_fuzz_readers.py`` (hypothesis mutations of
the same kinds of seed files); pytest does not collect this file.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
import warnings
from pathlib import Path

FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha", ".dcm", "dicom-folder"]
_WORKDIR = Path(tempfile.mkdtemp(prefix="medidiff-fuzz-"))


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer expect
    from medidiff.errors import InputError
    from medidiff.io import read_volume

    if not data:
        return
    kind = FORMATS[data[0] % len(FORMATS)]
    content = data[1:]
    for old in _WORKDIR.iterdir():
        if old.is_dir():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            old.unlink()
    if kind == "dicom-folder":
        path = _WORKDIR / "series"
        path.mkdir()
        (path / "IM0001").write_bytes(content)
    else:
        path = _WORKDIR / f"scan{kind}"
        path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            volume = read_volume(path)
        except InputError as exc:
            if "\n" in str(exc) or not str(exc):
                raise AssertionError(f"an InputError message must be one non-empty line: {exc!r}") from None
            return
    if volume.data.ndim != 4 or volume.data.dtype.name != "float32" or volume.meta.affine.shape != (4, 4):
        raise AssertionError(f"malformed volume {volume.data.shape} {volume.data.dtype}")


def make_corpus(folder: Path) -> list[Path]:
    """One small valid file per format, prefixed with its format byte."""
    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    raw = (np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) * 3 - 40).astype(np.int16)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        nib.Nifti1Image(raw, np.diag([0.9, 1.1, 2.5, 1.0])).to_filename(str(t / "a.nii"))
        files = {".nii": (t / "a.nii").read_bytes()}
        files[".nii.gz"] = gzip.compress(files[".nii"], mtime=0)
        image = sitk.GetImageFromArray(np.ascontiguousarray(raw.transpose(2, 1, 0)))
        for suffix in (".nrrd", ".mha"):
            sitk.WriteImage(image, str(t / f"c{suffix}"), False)
            files[suffix] = (t / f"c{suffix}").read_bytes()
        files[".dcm"] = files["dicom-folder"] = _dicom_slice(t / "slice.dcm")
    for kind, content in files.items():
        out = folder / f"seed-{kind.strip('.').replace('.', '-')}"
        out.write_bytes(bytes([FORMATS.index(kind)]) + content)
        written.append(out)
    return written


def _dicom_slice(path: Path) -> bytes:
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "0", 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], 2.5
    ds.Rows, ds.Columns = 5, 6
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.arange(30, dtype="<i2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path.read_bytes()


def _replay(paths: list[str]) -> int:
    files = [f for p in paths for f in (sorted(Path(p).iterdir()) if Path(p).is_dir() else [Path(p)])]
    for f in files:
        TestOneInput(f.read_bytes())
        print(f"ok {f}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--make-corpus":
        for path in make_corpus(Path(argv[2])):
            print(f"wrote {path}")
        return 0
    if len(argv) > 1 and argv[1] == "--replay":
        return _replay(argv[2:])
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris, or use --replay FILES", file=sys.stderr)
        return 2
    with atheris.instrument_imports():
        import medidiff.dicom  # noqa: F401
        import medidiff.io  # noqa: F401
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
