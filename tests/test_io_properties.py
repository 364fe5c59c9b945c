"""Property-based tests: exact NIfTI round trips, and readers fed garbage raise InputError only."""

from __future__ import annotations

import gzip
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_fixtures import rotation

from medidiff.errors import InputError
from medidiff.io import read_volume, write_volume
from medidiff.volume import Volume

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "float32", "float64"]


@st.composite
def nifti_cases(draw):
    ndim = draw(st.integers(3, 4))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        raw = rng.normal(0, 1000, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        low, high = max(info.min, -(2**24)), min(info.max, 2**24)
        raw = rng.integers(low, high, shape, endpoint=True).astype(dtype)
    angles = draw(st.tuples(*[st.floats(-np.pi, np.pi, allow_nan=False)] * 3))
    spacing = draw(st.tuples(*[st.floats(0.1, 5.0, allow_nan=False)] * 3))
    flips = np.diag([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = flips @ rotation(*angles) @ np.diag(spacing)
    affine[:3, 3] = draw(st.tuples(*[st.floats(-300, 300, allow_nan=False)] * 3))
    scaled = dtype.kind in "iu" and draw(st.booleans())
    slope = draw(st.sampled_from([0.5, 0.37, 2.0, 1e-3])) if scaled else None
    inter = draw(st.sampled_from([0.0, -1024.0, 12.5])) if scaled else None
    codes = (draw(st.sampled_from([0, 1, 2, 3, 4])), draw(st.sampled_from([0, 1, 2, 3, 4])))
    suffix = draw(st.sampled_from([".nii", ".nii.gz"]))
    nifti2 = draw(st.booleans())
    return raw, affine, slope, inter, codes, suffix, nifti2


def _stored(path: Path) -> bytes:
    return gzip.open(path).read() if path.name.endswith(".gz") else path.read_bytes()


@FAST
@given(nifti_cases())
def test_nifti_round_trip_is_exact(case):
    raw, affine, slope, inter, (scode, qcode), suffix, nifti2 = case
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = klass(raw, None)
    img.header.set_data_dtype(raw.dtype)
    img.header.set_sform(affine, code=scode)
    img.header.set_qform(affine, code=qcode)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / f"in{suffix}", Path(tmp) / f"out{suffix}"
        img.to_filename(str(src))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # float64 values that float32 rounds: still written exactly
            volume = read_volume(src)
        assert volume.meta.original_dtype == raw.dtype.name
        assert volume.n_volumes == (raw.shape[3] if raw.ndim == 4 else 1)
        write_volume(volume, out)
        assert _stored(out) == _stored(src)
        a, b = nib.load(str(src)), nib.load(str(out))
        np.testing.assert_array_equal(a.affine, b.affine)
        assert (a.dataobj.slope, a.dataobj.inter) == (b.dataobj.slope, b.dataobj.inter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = read_volume(out)
        np.testing.assert_array_equal(again.data, volume.data)


@FAST
@given(st.binary(min_size=0, max_size=2000),
       st.sampled_from([".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm"]))
def test_random_bytes_raise_input_error_only(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"scan{suffix}"
        path.write_bytes(content)
        try:
            read_volume(path)
        except InputError as exc:
            assert "\n" not in str(exc)
        else:  # pragma: no cover - random bytes are never a valid scan
            raise AssertionError(f"random bytes read as a scan: {content[:40]!r}")


def _valid_nifti(gz: bool) -> bytes:
    raw = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.nii.gz" if gz else "a.nii")
        nib.Nifti1Image(raw, np.eye(4)).to_filename(str(path))
        return path.read_bytes()


VALID = {True: _valid_nifti(True), False: _valid_nifti(False)}


@FAST
@given(st.booleans(), st.data())
def test_damaged_nifti_reads_or_raises_input_error(gz, data):
    content = bytearray(VALID[gz])
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="n_flips")):
            position = data.draw(st.integers(0, len(content) - 1), label="position")
            content[position] = data.draw(st.integers(0, 255), label="byte")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("d.nii.gz" if gz else "d.nii")
        path.write_bytes(bytes(content))
        try:
            volume = read_volume(path)
        except InputError as exc:
            assert "\n" not in str(exc)
        else:
            assert isinstance(volume, Volume) and volume.data.ndim == 4


@FAST
@given(st.lists(st.binary(min_size=0, max_size=600), min_size=1, max_size=3))
def test_folder_of_random_files_raises_input_error(contents):
    with tempfile.TemporaryDirectory() as tmp:
        for k, content in enumerate(contents):
            (Path(tmp) / f"IM{k}").write_bytes(b"\x00" * 128 + b"DICM" + content)
        try:
            read_volume(tmp)
        except InputError as exc:
            assert "\n" not in str(exc)
