"""NIfTI reading and writing: exact round trips, dtype rules, geometry, errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from io_fixtures import REFERENCE, oblique_lps_affine

from medidiff.errors import InputError, MedidiffError, OutputExistsError
from medidiff.files import TEMP_PREFIX
from medidiff.io import guess_modality, read_volume, write_volume
from medidiff.volume import Volume


def _save(path: Path, raw: np.ndarray, affine: np.ndarray, *, slope=None, inter=None, sform=1, qform=1,
          klass=nib.Nifti1Image, endian: str = "<") -> Path:
    header = klass.header_class(endianness=endian)
    header.set_data_dtype(raw.dtype)
    img = klass(raw, None, header=header)
    img.header.set_sform(affine, code=sform)
    img.header.set_qform(affine, code=qform)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    img.to_filename(str(path))
    return path


def _stored(path: Path) -> bytes:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fobj:
        return fobj.read()


def _assert_same_nifti(a: Path, b: Path) -> None:
    ia, ib = nib.load(str(a)), nib.load(str(b))
    assert ia.get_data_dtype() == ib.get_data_dtype()
    assert ia.shape == ib.shape
    np.testing.assert_array_equal(np.asarray(ia.dataobj.get_unscaled()),
                                  np.asarray(ib.dataobj.get_unscaled()))
    np.testing.assert_array_equal(ia.affine, ib.affine)
    np.testing.assert_array_equal(ia.header.get_sform(), ib.header.get_sform())
    np.testing.assert_array_equal(ia.header.get_qform(), ib.header.get_qform())
    for key in ("sform_code", "qform_code"):
        assert ia.header[key] == ib.header[key]
    assert (ia.dataobj.slope, ia.dataobj.inter) == (ib.dataobj.slope, ib.dataobj.inter)


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("codes", [(1, 1), (2, 0), (0, 4), (4, 2)])
def test_int16_scaled_oblique_round_trip_is_bit_exact(tmp_path, suffix, codes):
    raw = np.random.default_rng(0).integers(-32768, 32767, (7, 6, 5), dtype=np.int16)
    src = _save(tmp_path / f"in{suffix}", raw, oblique_lps_affine(), slope=0.37, inter=-12.5,
                sform=codes[0], qform=codes[1])
    before = src.read_bytes()
    volume = read_volume(src)
    assert volume.meta.original_dtype == "int16"
    assert volume.data.shape == (1, 7, 6, 5) and volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data[0], raw * np.float64(np.float32(0.37)) - 12.5, rtol=1e-6)
    out = write_volume(volume, tmp_path / f"out{suffix}")
    _assert_same_nifti(src, out)
    assert _stored(src) == _stored(out)  # header and data, byte for byte
    assert src.read_bytes() == before  # the input is never touched


def test_nifti2_big_endian_round_trip(tmp_path):
    raw = np.random.default_rng(1).integers(0, 4000, (4, 5, 3), dtype=np.uint16).astype(">u2")
    src = _save(tmp_path / "in.nii", raw, oblique_lps_affine(), klass=nib.Nifti2Image, endian=">",
                slope=2.0, inter=-1024)
    volume = read_volume(src)
    assert volume.meta.original_dtype == "uint16"
    out = write_volume(volume, tmp_path / "out.nii")
    assert isinstance(nib.load(str(out)), nib.Nifti2Image)
    assert _stored(src) == _stored(out)


def test_4d_round_trip_keeps_every_volume(tmp_path):
    raw = np.random.default_rng(2).integers(-500, 500, (5, 4, 3, 6), dtype=np.int16)
    src = _save(tmp_path / "dwi.nii.gz", raw, oblique_lps_affine())
    volume = read_volume(src)
    assert volume.n_volumes == 6 and volume.spatial_shape == (5, 4, 3)
    for t in range(6):
        np.testing.assert_array_equal(volume.data[t], raw[..., t])
    out = write_volume(volume, tmp_path / "out.nii.gz")
    assert _stored(src) == _stored(out)


def test_5d_and_2d_shapes_are_kept(tmp_path):
    raw5 = np.arange(2 * 3 * 4 * 2 * 3, dtype=np.float32).reshape(2, 3, 4, 2, 3)
    src = _save(tmp_path / "five.nii", raw5, np.eye(4))
    volume = read_volume(src)
    assert volume.data.shape == (6, 2, 3, 4)
    assert nib.load(str(write_volume(volume, tmp_path / "five_out.nii"))).shape == (2, 3, 4, 2, 3)
    assert _stored(src) == _stored(tmp_path / "five_out.nii")
    raw2 = np.arange(12, dtype=np.int16).reshape(3, 4)
    volume2 = read_volume(_save(tmp_path / "flat.nii", raw2, np.eye(4)))
    assert volume2.data.shape == (1, 3, 4, 1)  # callers decide whether a single slice is acceptable


def test_float64_stored_values_round_trip(tmp_path):
    raw = np.random.default_rng(3).integers(0, 500, (4, 4, 4)).astype(np.float64) / 4
    src = _save(tmp_path / "f64.nii.gz", raw, oblique_lps_affine())
    out = write_volume(read_volume(src), tmp_path / "out.nii.gz")
    assert nib.load(str(out)).get_data_dtype() == np.float64
    assert _stored(src) == _stored(out)


def test_denoised_values_are_written_as_float32_not_clipped(tmp_path):
    raw = np.random.default_rng(4).integers(-2000, 2000, (6, 5, 4), dtype=np.int16)
    src = _save(tmp_path / "ct.nii.gz", raw, oblique_lps_affine(), sform=1, qform=1)
    volume = read_volume(src)
    denoised = volume.with_data(volume.data * 20.0 + 0.25)  # beyond int16 and not integers
    out = nib.load(str(write_volume(denoised, tmp_path / "den.nii.gz")))
    assert out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(out.get_fdata(dtype=np.float32), denoised.data[0])
    np.testing.assert_array_equal(out.affine, nib.load(str(src)).affine)
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (1, 1)
    again = read_volume(tmp_path / "den.nii.gz")
    np.testing.assert_array_equal(again.data, denoised.data)


def test_changed_values_that_fit_keep_the_stored_type(tmp_path):
    raw = np.random.default_rng(5).integers(0, 1000, (4, 4, 4), dtype=np.int16)
    volume = read_volume(_save(tmp_path / "a.nii", raw, np.eye(4)))
    shifted = volume.with_data(volume.data + 7)
    out = nib.load(str(write_volume(shifted, tmp_path / "b.nii")))
    assert out.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(out.dataobj), raw + 7)


def test_changed_affine_is_written_to_sform_and_qform(tmp_path):
    raw = np.zeros((3, 4, 5), dtype=np.uint8)
    volume = read_volume(_save(tmp_path / "a.nii", raw, np.eye(4), sform=2, qform=0))
    affine = oblique_lps_affine()
    moved = Volume(volume.data, volume.meta.replace(affine=affine))
    out = nib.load(str(write_volume(moved, tmp_path / "b.nii.gz")))
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    np.testing.assert_allclose(out.header.get_qform(), affine, atol=1e-4)
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 2)


def test_sheared_affine_goes_to_sform_only(tmp_path):
    affine = np.eye(4)
    affine[0, 2] = 0.5  # a shear a quaternion cannot hold
    volume = Volume.from_array(np.zeros((3, 3, 3), dtype=np.float32), affine)
    out = nib.load(str(write_volume(volume, tmp_path / "s.nii")))
    assert int(out.header["qform_code"]) == 0 and int(out.header["sform_code"]) == 2
    np.testing.assert_array_equal(out.affine, affine)
    np.testing.assert_allclose(out.header.get_zooms(), np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


@pytest.mark.parametrize(("array", "dtype"), [
    (np.arange(-60, 60, dtype=np.int16).reshape(4, 5, 6), "int16"),
    (np.arange(120, dtype=np.float32).reshape(4, 5, 6) / 3, "float32"),
])
def test_arrays_use_their_integer_type_only_when_values_fit(tmp_path, array, dtype):
    out = nib.load(str(write_volume(Volume.from_array(array, oblique_lps_affine()), tmp_path / "x.nii")))
    assert out.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(out.get_fdata(dtype=np.float32), array.astype(np.float32))
    np.testing.assert_allclose(out.affine, oblique_lps_affine(), atol=1e-5)
    np.testing.assert_allclose(out.header.get_qform(), oblique_lps_affine(), atol=1e-4)
    np.testing.assert_allclose(out.header.get_zooms(), (0.9, 1.1, 2.5), rtol=1e-6)


def test_upper_case_names_and_deterministic_output(tmp_path):
    volume = Volume.from_array(np.arange(60, dtype=np.float32).reshape(3, 4, 5) / 7)
    first = write_volume(volume, tmp_path / "A.NII.GZ")
    assert first.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_volume(first).data, volume.data)
    second = write_volume(read_volume(first), tmp_path / "B.nii.gz")
    assert first.read_bytes() == second.read_bytes()  # no time stamp or name in the gzip header


def test_write_refuses_other_formats_and_existing_files(tmp_path):
    volume = Volume.from_array(np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(MedidiffError, match="NIfTI only"):
        write_volume(volume, tmp_path / "x.nrrd")
    target = write_volume(volume, tmp_path / "x.nii.gz")
    with pytest.raises(OutputExistsError, match="--force"):
        write_volume(volume, target)
    write_volume(Volume.from_array(np.ones((2, 2, 2), dtype=np.float32)), target, force=True)
    assert read_volume(target).data.min() == 1
    with pytest.raises(MedidiffError, match="does not exist"):
        write_volume(volume, tmp_path / "missing" / "x.nii")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("raw", [
    np.array([[[2**24 + 1, 0]]], dtype=np.int32),
    np.array([[[0.1, 1 / 3, 1e-300]]], dtype=np.float64),
])
def test_values_float32_cannot_hold_warn_and_still_round_trip(tmp_path, raw):
    src = _save(tmp_path / "big.nii", raw, np.eye(4))
    with pytest.warns(UserWarning, match="float32"):
        volume = read_volume(src)
    assert _stored(write_volume(volume, tmp_path / "same.nii")) == _stored(src)
    changed = nib.load(str(write_volume(volume.with_data(volume.data + 1), tmp_path / "changed.nii")))
    assert changed.get_data_dtype() == raw.dtype
    np.testing.assert_array_equal(changed.get_fdata(dtype=np.float32), volume.data[0] + 1)


@pytest.mark.slow  # imports torch and MONAI (seconds)
def test_metatensor_conversion_keeps_geometry(tmp_path):
    raw = np.random.default_rng(6).integers(0, 100, (4, 5, 6), dtype=np.int16)
    volume = read_volume(_save(tmp_path / "a.nii", raw, oblique_lps_affine()))
    back = Volume.from_metatensor(volume.to_metatensor())
    np.testing.assert_array_equal(back.data, volume.data)
    np.testing.assert_array_equal(back.meta.affine, volume.meta.affine)
    write_volume(back, tmp_path / "b.nii")
    assert _stored(tmp_path / "a.nii") == _stored(tmp_path / "b.nii")


# ------------------------------------------------------------------------------------------- errors


def _one_line_error(path, match: str) -> str:
    with pytest.raises(InputError, match=match) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.nii.gz", "no such file")


def test_text_file_named_nii_gz(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("patient list\n")
    _one_line_error(path, "not gzip-compressed")


@pytest.mark.parametrize(("saved", "named", "hint"), [("a.nii", "b.nii.gz", "rename it to .nii"),
                                                       ("a.nii.gz", "b.nii", "rename it to .nii.gz")])
def test_a_nifti_named_with_the_wrong_compression_suggests_renaming(tmp_path, saved, named, hint):
    src = _save(tmp_path / saved, np.zeros((2, 2, 2), np.int16), np.eye(4))
    wrong = tmp_path / named
    wrong.write_bytes(src.read_bytes())
    _one_line_error(wrong, hint)


def test_truncated_nii_gz(tmp_path):
    src = _save(tmp_path / "a.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32),
                np.eye(4))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    _one_line_error(cut, "truncated")


def test_damaged_gzip_header_declaring_terabytes(tmp_path):
    src = _save(tmp_path / "a.nii", np.zeros((4, 4, 4), np.int16), np.eye(4))
    content = bytearray(src.read_bytes())
    content[42:48] = np.array([30000, 30000, 30000], dtype="<i2").tobytes()  # dim[1:4]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(bytes(content)))
    _one_line_error(bad, "damaged")


def test_truncated_nii(tmp_path):
    src = _save(tmp_path / "a.nii", np.zeros((20, 20, 20), np.float32), np.eye(4))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(src.read_bytes()[:5000])
    _one_line_error(cut, "truncated")


@pytest.mark.parametrize(("content", "match"), [(b"", "empty"), (b"x" * 400, "not a NIfTI")])
def test_empty_or_foreign_nii(tmp_path, content, match):
    path = tmp_path / "bad.nii"
    path.write_bytes(content)
    _one_line_error(path, match)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG....")
    _one_line_error(path, "unsupported file type")


def test_rgb_nifti_is_refused(tmp_path):
    rgb = np.zeros((2, 2, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    img = nib.Nifti1Image(rgb, np.eye(4))
    img.to_filename(str(tmp_path / "rgb.nii"))
    _one_line_error(tmp_path / "rgb.nii", "not supported")


def test_series_option_is_refused_for_nifti(tmp_path):
    src = _save(tmp_path / "a.nii", np.zeros((2, 2, 2), np.int16), np.eye(4))
    with pytest.raises(InputError, match="only applies to DICOM"):
        read_volume(src, series=1)


# ------------------------------------------------------------------------------------------- real scans

REFERENCE_SCANS = {
    "colin27_ch2_T1_brain_1mm.nii.gz": ((181, 217, 181), "MR"),
    "seg3d_T1_head.nii.gz": ((160, 232, 160), "MR"),
    "rorden_clinical_T2_1mm.nii.gz": ((156, 175, 146), "MR"),
    "totalseg_example_ct_abdomen_3mm.nii.gz": ((122, 101, 112), "CT"),
    "totalseg_chest_cta_crop_1p5mm.nii.gz": ((120, 126, 164), "CT"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SCANS))
def test_reference_scans(name):
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference scan {path} is not available (see shared/data/README.md)")
    volume = read_volume(path)
    img = nib.load(str(path))
    shape, modality = REFERENCE_SCANS[name]
    assert volume.spatial_shape == shape and volume.n_volumes == 1
    np.testing.assert_array_equal(volume.meta.affine, img.affine)
    assert volume.meta.original_dtype == img.get_data_dtype().name
    np.testing.assert_allclose(volume.data[0], img.get_fdata(dtype=np.float32), rtol=1e-6)
    assert volume.meta.modality is None and guess_modality(volume) == modality


def test_reference_ct_round_trip_is_exact(tmp_path):
    path = REFERENCE / "totalseg_chest_cta_crop_1p5mm.nii.gz"
    if not path.exists():
        pytest.skip(f"reference scan {path} is not available (see shared/data/README.md)")
    out = write_volume(read_volume(path), tmp_path / "cta.nii.gz")
    assert _stored(path) == _stored(out)


@pytest.mark.parametrize("name", ["e.nii", "e.nii.gz", "e.nrrd", "e.mha", "e.mhd", "e.nhdr", "e.dcm"])
def test_an_empty_file_of_any_format_is_called_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    _one_line_error(path, "the file is empty")
