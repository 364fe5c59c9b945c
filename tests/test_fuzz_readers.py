"""A short fuzz run of the scan readers: byte mutations of real small NIfTI, NRRD, MHA and DICOM files.

Each example starts from a valid file and applies a few hypothesis-chosen mutations (bit flips,
bytes or 32-bit integers overwritten, chunks inserted or deleted, truncation), biased towards the
headers where the parsers make their decisions. The readers must either return a well-formed
:class:`Volume` or raise :class:`InputError` with one line; any other exception, a hang or a change
to the input file fails. The whole module runs in a few seconds; ``fuzz/fuzz_readers.py`` is the
same target for a long atheris run.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_fixtures import dicom_geometry, stored_ramp, write_dicom_series

from medidiff.errors import InputError
from medidiff.io import read_volume
from medidiff.volume import Volume

# MEDIDIFF_FUZZ_EXAMPLES=5000 turns this into a longer local run; CI keeps the default few seconds
EXAMPLES = int(os.environ.get("MEDIDIFF_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SERIES = settings(FUZZ, max_examples=max(1, EXAMPLES // 5))  # a series read is ~0.2 s
PER_EXAMPLE_LIMIT_S = 20
INTERESTING_INTS = [0, 1, -1, 2, 255, 256, 348, 540, 2**15 - 1, -(2**15), 2**16, 2**31 - 1, -(2**31), 2**24]


def _seeds() -> dict[str, bytes]:
    """Small valid files of every format the readers take (built once, in memory)."""
    import SimpleITK as sitk

    seeds: dict[str, bytes] = {}
    raw = (np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) * 3 - 40).astype(np.int16)
    affine = np.diag([0.9, 1.1, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        img = nib.Nifti1Image(raw, affine)
        img.header.set_slope_inter(0.5, -10.0)
        img.to_filename(str(t / "a.nii"))
        seeds[".nii"] = (t / "a.nii").read_bytes()
        seeds[".nii.gz"] = gzip.compress(seeds[".nii"], compresslevel=6, mtime=0)
        nib.Nifti2Image(np.stack([raw, raw], -1).astype(np.float32), affine).to_filename(str(t / "b.nii"))
        seeds["nifti2.nii"] = (t / "b.nii").read_bytes()
        image = sitk.GetImageFromArray(np.ascontiguousarray(raw.transpose(2, 1, 0)))
        image.SetSpacing((0.9, 1.1, 2.5))
        image.SetOrigin((1.0, 2.0, 3.0))
        for suffix in (".nrrd", ".mha"):
            sitk.WriteImage(image, str(t / f"c{suffix}"), False)  # uncompressed: mutations reach the voxels
            seeds[suffix] = (t / f"c{suffix}").read_bytes()
        files = write_dicom_series(t / "dicom", stored_ramp(n_slices=4, rows=5, cols=6), dicom_geometry(),
                                   shuffle_seed=None)
        for k, path in enumerate(sorted(files)):
            seeds[f"dicom{k}"] = path.read_bytes()
    return seeds


SEEDS = _seeds()
DICOM_SLICES = [SEEDS[k] for k in sorted(SEEDS) if k.startswith("dicom")]


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (POSIX main thread only; elsewhere no limit)."""
    if sys.platform == "win32" or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"a reader ran for more than {seconds} s on a mutated file")

    try:
        old = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def mutated(draw, seed: bytes, header: int) -> bytes:
    """``seed`` with 1-6 mutations; positions fall in the first ``header`` bytes half of the time."""
    content = bytearray(seed)
    for _ in range(draw(st.integers(1, 6), label="n_mutations")):
        if not content:
            break
        limit = len(content) - 1
        near = draw(st.booleans(), label="in_header")
        position = draw(st.integers(0, min(header, limit) if near else limit), label="position")
        kind = draw(st.sampled_from(["flip", "byte", "int32", "insert", "delete", "truncate"]), label="kind")
        if kind == "flip":
            content[position] ^= 1 << draw(st.integers(0, 7), label="bit")
        elif kind == "byte":
            content[position] = draw(st.integers(0, 255), label="byte")
        elif kind == "int32":
            value = draw(st.sampled_from(INTERESTING_INTS) | st.integers(-(2**31), 2**31 - 1), label="int")
            order = draw(st.sampled_from("<>"), label="order")
            content[position:position + 4] = struct.pack(f"{order}i", value)
        elif kind == "insert":
            content[position:position] = draw(st.binary(min_size=1, max_size=64), label="inserted")
        elif kind == "delete":
            del content[position:position + draw(st.integers(1, 64), label="deleted")]
        else:
            del content[position:]
    return bytes(content)


def _check(path: Path) -> None:
    before = path.read_bytes() if path.is_file() else None
    with _time_limit(PER_EXAMPLE_LIMIT_S), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            volume = read_volume(path)
        except InputError as exc:
            message = str(exc)
            assert message and "\n" not in message and len(message) < 1000, message
        else:
            assert isinstance(volume, Volume)
            assert volume.data.ndim == 4 and volume.data.dtype == np.float32 and volume.data.size > 0
            assert volume.meta.affine.shape == (4, 4)
    if before is not None:
        assert path.read_bytes() == before  # readers never write


@pytest.mark.parametrize(("name", "suffix", "header"), [
    (".nii", ".nii", 352), (".nii.gz", ".nii.gz", 64), ("nifti2.nii", ".nii", 544),
    (".nrrd", ".nrrd", 300), (".mha", ".mha", 400),
])
def test_mutated_single_file_formats(name: str, suffix: str, header: int):
    seed = SEEDS[name]

    @FUZZ
    @given(mutated(seed, header))
    def run(content: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"scan{suffix}"
            path.write_bytes(content)
            _check(path)

    run()


@FUZZ_SERIES
@given(st.integers(0, len(DICOM_SLICES) - 1), st.data())
def test_mutated_slice_in_a_dicom_series(which: int, data):
    content = data.draw(mutated(DICOM_SLICES[which], 1200), label="slice")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        for k, original in enumerate(DICOM_SLICES):
            (folder / f"IM{k:04d}").write_bytes(content if k == which else original)
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        _check(folder)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@FUZZ
@given(st.data())
def test_mutated_single_dicom_file(data):
    content = data.draw(mutated(DICOM_SLICES[0], 1200), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice.dcm"
        path.write_bytes(content)
        _check(path)


def test_seeds_are_valid_scans():
    """The fuzz starts from files the readers accept, so mutations probe real parsing paths."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, suffix in [(".nii", ".nii"), (".nii.gz", ".nii.gz"), ("nifti2.nii", ".nii"),
                             (".nrrd", ".nrrd"), (".mha", ".mha")]:
            path = Path(tmp) / f"seed{suffix}"
            path.write_bytes(SEEDS[name])
            assert read_volume(path).spatial_shape == (6, 5, 4), name
        folder = Path(tmp) / "dicom"
        folder.mkdir()
        for k, content in enumerate(DICOM_SLICES):
            (folder / f"IM{k}").write_bytes(content)
        assert read_volume(folder).spatial_shape == (6, 5, 4)
        shutil.rmtree(folder)


@pytest.mark.parametrize(("rows", "cols"), [(65535, 65535), (20000, 20000), (5, 65535)])
def test_inflated_dicom_dimensions_are_refused_before_allocating(rows: int, cols: int):
    """Found by this fuzz run: a damaged Rows/Columns made the reader allocate gigabytes."""
    import pydicom

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        for k, content in enumerate(DICOM_SLICES):
            (folder / f"IM{k}").write_bytes(content)
            ds = pydicom.dcmread(folder / f"IM{k}")
            ds.Rows, ds.Columns = rows, cols
            ds.save_as(folder / f"IM{k}")
        with _time_limit(PER_EXAMPLE_LIMIT_S), pytest.raises(InputError, match="declare"):
            read_volume(folder)


def test_metaimage_declaring_an_empty_image_is_refused():
    """Found by this fuzz run: ``DimSize = 6 0 4`` was read as an empty volume."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "empty.mha"
        path.write_bytes(SEEDS[".mha"].replace(b"DimSize = 6 5 4", b"DimSize = 6 0 4"))
        with pytest.raises(InputError, match="empty"):
            read_volume(path)
