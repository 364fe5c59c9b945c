"""NRRD and MetaImage through SimpleITK: LPS geometry converted to RAS exactly; modality guess."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_fixtures import LPS_TO_RAS, rotation

from medidiff.errors import InputError
from medidiff.io import guess_modality, read_volume, write_volume
from medidiff.volume import Volume


def _oblique_image(array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((0.7, 1.3, 2.2))
    image.SetOrigin((-12.5, 40.25, 101.0))
    image.SetDirection(tuple(rotation(0.3, -0.2, 0.5).ravel()))
    return image


def _assert_same_world(volume: Volume, image: sitk.Image, indices) -> None:
    for index in indices:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = volume.meta.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], LPS_TO_RAS[:3, :3] @ lps, atol=1e-9)
        assert volume.data[(0, *index)] == image[index]


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", ".nhdr"])
def test_itk_formats_round_trip_geometry(tmp_path, suffix):
    array = np.random.default_rng(0).integers(-1000, 2000, (5, 4, 3), dtype=np.int16)  # (Z, Y, X)
    image = _oblique_image(array)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    assert volume.data.shape == (1, 3, 4, 5)
    assert volume.meta.original_dtype == "int16" and volume.meta.modality is None
    assert volume.meta.source_format == ("nrrd" if suffix in (".nrrd", ".nhdr") else "mha")
    np.testing.assert_array_equal(volume.data[0], array.transpose(2, 1, 0))
    _assert_same_world(volume, image, [(0, 0, 0), (2, 3, 4), (1, 0, 3)])
    np.testing.assert_allclose(volume.meta.spacing, (0.7, 1.3, 2.2))
    # to NIfTI: int16 kept, scanner codes, same world positions as SimpleITK reading the NIfTI
    out = write_volume(volume, tmp_path / "scan.nii.gz")
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.int16
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (1, 1)
    back = sitk.ReadImage(str(out))
    for index in [(0, 0, 0), (2, 3, 4)]:
        np.testing.assert_allclose(back.TransformIndexToPhysicalPoint(index),
                                   image.TransformIndexToPhysicalPoint(index), atol=1e-4)


def test_vector_nrrd_gives_channels(tmp_path):
    array = np.random.default_rng(1).random((4, 3, 2, 3)).astype(np.float32)  # (Z, Y, X, components)
    image = sitk.GetImageFromArray(array, isVector=True)
    sitk.WriteImage(image, str(tmp_path / "v.nrrd"))
    volume = read_volume(tmp_path / "v.nrrd")
    assert volume.data.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(volume.data, array.transpose(3, 2, 1, 0))


def test_4d_and_2d_metaimage(tmp_path):
    array4 = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (T, Z, Y, X)
    image4 = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in array4])  # a scalar 4D image
    assert image4.GetDimension() == 4
    sitk.WriteImage(image4, str(tmp_path / "t.mha"))
    volume = read_volume(tmp_path / "t.mha")
    assert volume.data.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(volume.data, array4.transpose(0, 3, 2, 1))
    array2 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    sitk.WriteImage(sitk.GetImageFromArray(array2), str(tmp_path / "flat.mha"))
    flat = read_volume(tmp_path / "flat.mha")
    assert flat.data.shape == (1, 4, 3, 1)
    np.testing.assert_array_equal(flat.data[0, :, :, 0], array2.T)


@pytest.mark.parametrize("suffix", ["mha", "nrrd"])
def test_a_4d_image_keeps_the_spacing_of_its_4th_axis_as_nifti(tmp_path, suffix):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((3, 6, 7, 8), np.float32), isVector=False)
    image.SetSpacing((1.0, 2.0, 3.0, 2.5))
    sitk.WriteImage(image, str(tmp_path / f"t.{suffix}"))
    write_volume(read_volume(tmp_path / f"t.{suffix}"), tmp_path / "t.nii.gz")
    written = nib.load(tmp_path / "t.nii.gz")
    assert written.shape == (8, 7, 6, 3)
    np.testing.assert_allclose(written.header.get_zooms(), (1.0, 2.0, 3.0, 2.5))


def test_metaimage_modality_field(tmp_path):
    path = tmp_path / "ct.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(path))
    text = path.read_bytes().replace(b"ElementType", b"Modality = MET_MOD_CT\nElementType", 1)
    path.write_bytes(text)
    assert read_volume(path).meta.modality == "CT"


def test_mhd_without_its_data_file(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(tmp_path / "a.mhd"))
    (tmp_path / "a.raw").unlink()
    with pytest.raises(InputError, match="data file") as info:
        read_volume(tmp_path / "a.mhd")
    assert "\n" not in str(info.value)


def test_garbage_nrrd(tmp_path):
    (tmp_path / "x.nrrd").write_text("NRRD0004\ntype: banana\n\n")
    with pytest.raises(InputError, match="x.nrrd") as info:
        read_volume(tmp_path / "x.nrrd")
    assert "\n" not in str(info.value)


def test_guess_modality():
    rng = np.random.default_rng(0)
    ct = np.full((20, 20, 20), -1000.0)
    ct[5:15, 5:15, 5:15] = rng.normal(40, 20, (10, 10, 10))
    assert guess_modality(Volume.from_array(ct)) == "CT"
    mr = rng.random((20, 20, 20)) * 800
    assert guess_modality(Volume.from_array(mr)) == "MR"
    raw_ct = ct + 1024  # CT stored without its intercept cannot be told from MR
    assert guess_modality(Volume.from_array(raw_ct)) == "MR"
    assert guess_modality(Volume.from_array(np.full((2, 2, 2), np.nan))) == "MR"
    soft = rng.normal(40, 60, (20, 20, 20))  # a CT crop of soft tissue and fat: no air, min above -500
    soft[:, :, :6] = rng.normal(-100, 30, (20, 20, 6))
    assert soft.min() > -500 and guess_modality(Volume.from_array(soft)) == "CT"
    z_scored = (mr - mr.mean()) / mr.std()  # normalized MR: negative, but nothing near HU sizes
    assert guess_modality(Volume.from_array(z_scored)) == "MR"
