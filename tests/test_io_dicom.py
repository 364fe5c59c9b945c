"""DICOM series: geometry against known values, SimpleITK and dcm2niix; hazards refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_fixtures import (
    LPS_TO_RAS,
    dicom_geometry,
    expected_ras_affine,
    stored_ramp,
    write_dicom_series,
    write_enhanced_mr,
    write_mosaic_series,
)

from medidiff.dicom import find_series
from medidiff.errors import InputError
from medidiff.io import read_volume, write_volume


@pytest.fixture()
def ct_series(tmp_path):
    geometry = dicom_geometry()
    stored = stored_ramp()
    folder = tmp_path / "ct"
    write_dicom_series(folder, stored, geometry, slope=2, intercept=-1024, description="abdomen")
    return folder, stored, geometry


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    (uid,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def _world_to_voxel_values(affine: np.ndarray, data: np.ndarray, other_affine: np.ndarray,
                           other: np.ndarray) -> None:
    """Every voxel of ``data`` has the same value at the same world position in ``other``."""
    if other.ndim == 3:
        other = other[..., None]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in data.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    inverse = np.linalg.inv(other_affine)
    theirs = world @ inverse[:3, :3].T + inverse[:3, 3]
    index = np.rint(theirs).astype(int)
    assert np.abs(theirs - index).max() < 1e-3
    for c in range(data.shape[0]):
        np.testing.assert_array_equal(other[index[:, 0], index[:, 1], index[:, 2], c], data[c].reshape(-1))


# ------------------------------------------------------------------------------------------- geometry


def test_oblique_series_geometry_and_hu(ct_series):
    folder, stored, geometry = ct_series
    volume = read_volume(folder)
    assert volume.data.shape == (1, 6, 5, 8)  # (C, columns, rows, slices)
    np.testing.assert_allclose(volume.meta.affine, expected_ras_affine(geometry), atol=1e-4)
    hu = stored.astype(np.float64) * 2 - 1024
    np.testing.assert_array_equal(volume.data[0], hu.transpose(2, 1, 0))
    assert volume.meta.modality == "CT" and volume.meta.original_dtype == "int16"
    assert volume.meta.tags["SeriesDescription"] == "abdomen"
    json.dumps(volume.meta.tags)


def test_series_matches_simpleitk(ct_series):
    folder, _, _ = ct_series
    volume = read_volume(folder)
    image = _sitk_series(folder)
    np.testing.assert_array_equal(volume.data[0], sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    for index in [(0, 0, 0), (5, 4, 7), (2, 3, 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = volume.meta.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], LPS_TO_RAS[:3, :3] @ lps, atol=1e-4)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_series_matches_dcm2niix(ct_series, tmp_path):
    folder, _, _ = ct_series
    volume = read_volume(folder)
    out = tmp_path / "ref"
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-f", "ref", "-o", str(out), str(folder)],
                   check=True, capture_output=True, timeout=60)
    ref = nib.load(str(out / "ref.nii"))
    _world_to_voxel_values(volume.meta.affine, volume.data, ref.affine, np.asarray(ref.dataobj))


def test_converted_series_is_int16_hu_with_scanner_codes(ct_series, tmp_path):
    folder, _, _ = ct_series
    volume = read_volume(folder)
    out = nib.load(str(write_volume(volume, tmp_path / "ct.nii.gz")))
    assert out.get_data_dtype() == np.int16
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (1, 1)
    np.testing.assert_allclose(out.affine, volume.meta.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.dataobj), volume.data[0])


def test_fractional_rescale_gives_float32(tmp_path):
    write_dicom_series(tmp_path / "pet", stored_ramp(), dicom_geometry(), slope=0.25, intercept=0.5)
    volume = read_volume(tmp_path / "pet")
    assert volume.meta.original_dtype == "float32"
    np.testing.assert_array_equal(volume.data[0], (stored_ramp() * 0.25 + 0.5).transpose(2, 1, 0))


def test_rescale_is_applied_per_slice(tmp_path):
    geometry, stored = dicom_geometry(), stored_ramp()
    uid = "1.2.826.0.1.3680043.8.498.80"
    write_dicom_series(tmp_path, stored[:4], geometry, series_uid=uid, slope=1, intercept=0, name_prefix="a")
    write_dicom_series(tmp_path, stored[4:], geometry, series_uid=uid, slope=3, intercept=-7, name_prefix="b",
                       positions=_positions(geometry, range(4, 8)))
    expected = np.concatenate([stored[:4].astype(float), stored[4:] * 3.0 - 7])
    np.testing.assert_array_equal(read_volume(tmp_path).data[0], expected.transpose(2, 1, 0))


def test_unsigned_ct_with_intercept_is_int16_hu(tmp_path):
    stored = np.random.default_rng(0).integers(0, 3000, (4, 5, 6)).astype(np.uint16)
    write_dicom_series(tmp_path, stored, dicom_geometry(), intercept=-1024, signed=False)
    volume = read_volume(tmp_path)
    assert volume.meta.original_dtype == "int16" and volume.data.min() >= -1024
    np.testing.assert_array_equal(volume.data[0], (stored.astype(float) - 1024).transpose(2, 1, 0))


def test_one_file_reads_its_series_and_subfolders_are_searched(tmp_path, monkeypatch):
    geometry = dicom_geometry()
    stored = stored_ramp()
    paths = write_dicom_series(tmp_path / "a", stored[:4], geometry)
    step = geometry["slice_spacing"] * geometry["normal"]
    positions = [geometry["origin"] + k * step for k in range(4, 8)]
    write_dicom_series(tmp_path / "b", stored[4:], geometry, positions=positions,
                       series_uid=str(read_volume(paths[0]).meta.tags["SeriesInstanceUID"]))
    shutil.move(str(tmp_path / "b"), str(tmp_path / "a" / "more"))
    whole = read_volume(tmp_path / "a")  # the series is split across a folder and its sub-folder
    np.testing.assert_array_equal(whole.data[0], stored.transpose(2, 1, 0))
    np.testing.assert_allclose(whole.meta.affine, expected_ras_affine(geometry), atol=1e-4)
    part = read_volume(paths[0])  # a file: its own folder only
    assert part.spatial_shape == (6, 5, 4)
    monkeypatch.chdir(paths[0].parent)
    assert read_volume(paths[0].name).spatial_shape == (6, 5, 4)


# ------------------------------------------------------------------------------------------- series


def test_two_series_are_listed_and_picked(tmp_path):
    geometry = dicom_geometry()
    write_dicom_series(tmp_path, stored_ramp(), geometry, description="T1 axial", series_number=3,
                       modality="MR", name_prefix="a")
    write_dicom_series(tmp_path, stored_ramp(n_slices=5), geometry, description="scout", series_number=1,
                       name_prefix="b")
    infos = find_series(tmp_path)
    assert [i.description for i in infos] == ["scout", "T1 axial"]
    with pytest.raises(InputError) as info:
        read_volume(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "2 DICOM series" in message and "--series" in message
    for i in infos:
        assert i.uid in message and f"[{i.index}]" in message
    assert "'T1 axial' 8 slices MR" in message and "'scout' 5 slices CT" in message
    assert read_volume(tmp_path, series=1).meta.tags["SeriesDescription"] == "T1 axial"
    assert read_volume(tmp_path, series="0").spatial_shape == (6, 5, 5)
    assert read_volume(tmp_path, series=infos[1].uid).meta.modality == "MR"
    a_file = next(p for p in tmp_path.iterdir() if p.name.startswith("b"))
    assert read_volume(a_file).spatial_shape == (6, 5, 5)
    assert read_volume(a_file, series=1).meta.tags["SeriesDescription"] == "T1 axial"
    with pytest.raises(InputError, match="no series index 7"):
        read_volume(tmp_path, series=7)
    with pytest.raises(InputError, match="no series with UID 1.2.3"):
        read_volume(tmp_path, series="1.2.3")


def test_a_scan_beside_its_localizers_is_read_and_the_choice_said(tmp_path, caplog):
    import pydicom

    geometry = dicom_geometry()
    write_dicom_series(tmp_path, stored_ramp(), geometry, description="axial", series_number=2, name_prefix="a")
    write_dicom_series(tmp_path, stored_ramp(n_slices=1), dicom_geometry(angles=(1.2, 0, 0)),
                       description="topogram", series_number=1, name_prefix="t")
    scout = write_dicom_series(tmp_path, stored_ramp(n_slices=3), dicom_geometry(angles=(0, 1.2, 0)),
                               description="lateral", series_number=3, name_prefix="l")
    for p in scout:
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(p)
    infos = find_series(tmp_path)
    assert [(i.description, i.not_a_volume) for i in infos] == [
        ("topogram", "one image"), ("axial", ""), ("lateral", "a localizer")]
    with caplog.at_level("WARNING", logger="medidiff.dicom"):
        volume = read_volume(tmp_path)
    assert volume.meta.tags["SeriesDescription"] == "axial" and volume.spatial_shape == (6, 5, 8)
    (record,) = caplog.records
    assert "'axial' 8 slices" in record.getMessage() and "'topogram' (one image)" in record.getMessage()
    assert "'lateral' (a localizer)" in record.getMessage() and "--series" in record.getMessage()
    assert read_volume(tmp_path, series=2).meta.tags["SeriesDescription"] == "lateral"  # still choosable
    write_dicom_series(tmp_path, stored_ramp(), geometry, description="axial soft", series_number=4,
                       name_prefix="s")
    with pytest.raises(InputError, match="4 DICOM series") as info:  # two scans: the user chooses
        read_volume(tmp_path)
    assert "'topogram' 1 slices CT (one image)" in str(info.value) and "(a localizer)" in str(info.value)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_series_reads_like_uncompressed(tmp_path, syntax):
    import pydicom.uid
    from pydicom.pixels import get_encoder

    uid = getattr(pydicom.uid, syntax)
    if not get_encoder(uid).is_available:
        pytest.skip(f"no pydicom encoder for {syntax}")
    # OpenJPEG needs at least 32 pixels a side; GDCM's RLE decoder fails on very narrow images
    geometry, stored = dicom_geometry(), stored_ramp(n_slices=4, rows=34, cols=40)
    write_dicom_series(tmp_path / "plain", stored, geometry, slope=2, intercept=-1024)
    write_dicom_series(tmp_path / "packed", stored, geometry, slope=2, intercept=-1024, transfer_syntax=uid)
    plain, packed = read_volume(tmp_path / "plain"), read_volume(tmp_path / "packed")
    np.testing.assert_array_equal(packed.data, plain.data)
    np.testing.assert_allclose(packed.meta.affine, plain.meta.affine, atol=1e-9)
    reference = sitk.GetArrayFromImage(_sitk_series(tmp_path / "packed")).transpose(2, 1, 0)
    np.testing.assert_array_equal(packed.data[0], reference)


def test_jpeg_lossless_series_written_by_gdcm(tmp_path):
    geometry, stored = dicom_geometry(), stored_ramp(n_slices=4, rows=34, cols=40)
    plain = write_dicom_series(tmp_path / "plain", stored, geometry, modality="MR")
    (tmp_path / "jpeg").mkdir()
    for path in plain:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")  # JPEG lossless, process 14
        writer.SetFileName(str(tmp_path / "jpeg" / path.name))
        writer.Execute(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(read_volume(tmp_path / "jpeg").data, read_volume(tmp_path / "plain").data)


def test_gdcm_decodes_what_pydicom_cannot(ct_series, monkeypatch):
    import pydicom.dataset

    def no_decoder(self):
        raise NotImplementedError("no pixel data handler")

    folder, stored, _ = ct_series
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    np.testing.assert_array_equal(read_volume(folder).data[0], (stored * 2.0 - 1024).transpose(2, 1, 0))


def test_exact_copies_of_an_instance_are_ignored(ct_series):
    folder, stored, _ = ct_series
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "copy_of_first")
    np.testing.assert_array_equal(read_volume(folder).data[0], (stored * 2.0 - 1024).transpose(2, 1, 0))


# ------------------------------------------------------------------------------------------- hazards


def _positions(geometry, ks):
    step = geometry["slice_spacing"] * geometry["normal"]
    return [geometry["origin"] + k * step for k in ks]


def _refused(folder: Path, match: str) -> str:
    with pytest.raises(InputError, match=match) as info:
        read_volume(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    return str(info.value)


def test_missing_slice_is_refused(tmp_path):
    geometry = dicom_geometry()
    write_dicom_series(tmp_path, stored_ramp(n_slices=7), geometry,
                       positions=_positions(geometry, [0, 1, 2, 4, 5, 6, 7]))
    assert "about 1 slice(s) missing" in _refused(tmp_path, "missing slices")


def test_duplicate_positions_are_refused(tmp_path):
    geometry = dicom_geometry()
    write_dicom_series(tmp_path, stored_ramp(n_slices=8), geometry,
                       positions=_positions(geometry, [0, 1, 2, 3, 3, 4, 5, 6]))
    _refused(tmp_path, "duplicate slice positions")


def test_two_acquisitions_in_one_series_are_refused(tmp_path):
    geometry = dicom_geometry()
    uid = "1.2.826.0.1.3680043.8.498.77"
    for n, prefix in ((1, "a"), (2, "b")):
        write_dicom_series(tmp_path, stored_ramp(n_slices=4, seed=n), geometry, series_uid=uid,
                           name_prefix=prefix, instance_offset=10 * n)
    assert "InstanceNumber" not in _refused(tmp_path, "duplicate slice positions")


def test_uneven_spacing_is_refused(tmp_path):
    geometry = dicom_geometry()
    write_dicom_series(tmp_path, stored_ramp(n_slices=6), geometry,
                       positions=_positions(geometry, [0, 1, 2, 3.3, 4.3, 5.3]))
    _refused(tmp_path, "uneven slice spacing")


def test_mixed_orientations_are_refused(tmp_path):
    geometry = dicom_geometry()
    iop = [*geometry["row"], *geometry["col"]]
    other = [*geometry["col"], *geometry["row"]]
    write_dicom_series(tmp_path, stored_ramp(n_slices=4), geometry, orientations=[iop, iop, other, iop])
    _refused(tmp_path, "mixed slice orientations")


def test_gantry_tilt_is_refused(tmp_path):
    geometry = dicom_geometry()
    shear = geometry["row"] * 0.4  # each slice moves 0.4 mm sideways: about 9 degrees of tilt
    positions = [p + k * shear for k, p in enumerate(_positions(geometry, range(6)))]
    write_dicom_series(tmp_path, stored_ramp(n_slices=6), geometry, positions=positions)
    assert "dcm2niix" in _refused(tmp_path, "gantry tilt of about 9")


def test_multi_echo_is_split_into_volumes_ordered_by_echo_time(tmp_path):
    geometry = dicom_geometry()
    uid = "1.2.826.0.1.3680043.8.498.78"
    echoes = {25.0: stored_ramp(seed=2), 5.0: stored_ramp(seed=1), 15.0: stored_ramp(seed=3)}
    for k, (te, stored) in enumerate(echoes.items()):
        write_dicom_series(tmp_path, stored, geometry, modality="MR", series_uid=uid, echo_time=te,
                           name_prefix=f"e{k}", shuffle_seed=k)
    volume = read_volume(tmp_path)
    assert volume.data.shape == (3, 6, 5, 8)
    assert volume.meta.tags["EchoTime"] == [5.0, 15.0, 25.0]
    for c, te in enumerate(sorted(echoes)):
        np.testing.assert_array_equal(volume.data[c], echoes[te].transpose(2, 1, 0))
    np.testing.assert_allclose(volume.meta.affine, expected_ras_affine(geometry), atol=1e-4)


def test_echoes_at_different_positions_are_refused(tmp_path):
    geometry = dicom_geometry()
    uid = "1.2.826.0.1.3680043.8.498.79"
    write_dicom_series(tmp_path, stored_ramp(n_slices=4), geometry, series_uid=uid, echo_time=5,
                       name_prefix="a")
    write_dicom_series(tmp_path, stored_ramp(n_slices=4), geometry, series_uid=uid, echo_time=10,
                       name_prefix="b", positions=_positions(geometry, [10, 11, 12, 13]))
    _refused(tmp_path, "echoes cover different slice positions")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_mosaic_is_demosaiced_into_4d(tmp_path, sign):
    geometry = dicom_geometry(pixel_spacing=(3.0, 3.0), slice_spacing=3.5)
    volumes = np.random.default_rng(7).integers(0, 1000, (2, 5, 4, 6)).astype(np.int16)
    _, expected = write_mosaic_series(tmp_path / "bold", volumes, geometry, normal_sign=sign)
    volume = read_volume(tmp_path / "bold")
    assert volume.data.shape == (2, 6, 4, 5) and volume.meta.tags["mosaic"] is True
    np.testing.assert_array_equal(volume.data, volumes.transpose(0, 3, 2, 1))
    np.testing.assert_allclose(volume.meta.affine, expected, atol=1e-4)
    if shutil.which("dcm2niix"):
        out = tmp_path / "ref"
        out.mkdir()
        subprocess.run(["dcm2niix", "-z", "n", "-f", "ref", "-o", str(out), str(tmp_path / "bold")],
                       check=True, capture_output=True, timeout=60)
        ref = nib.load(str(out / "ref.nii"))
        _world_to_voxel_values(volume.meta.affine, volume.data, ref.affine, np.asarray(ref.dataobj))


def test_mosaic_without_slice_normal_is_refused(tmp_path):
    import pydicom

    geometry = dicom_geometry(pixel_spacing=(3.0, 3.0))
    paths, _ = write_mosaic_series(tmp_path, np.zeros((1, 4, 4, 4), np.int16), geometry)
    ds = pydicom.dcmread(paths[0])
    del ds[0x0029, 0x1010]  # anonymisers often strip the CSA header
    ds.save_as(paths[0])
    _refused(tmp_path, "SliceNormalVector")


def test_enhanced_multiframe_multi_echo(tmp_path):
    geometry = dicom_geometry()
    volumes = {10.0: stored_ramp(seed=1), 4.0: stored_ramp(seed=2)}
    write_enhanced_mr(tmp_path / "enh" / "mffe.dcm", volumes, geometry, slope=2, intercept=-5)
    (info,) = find_series(tmp_path / "enh")
    assert info.n_images == 16
    volume = read_volume(tmp_path / "enh")
    assert volume.data.shape == (2, 6, 5, 8) and volume.meta.tags["EchoTime"] == [4.0, 10.0]
    for c, te in enumerate((4.0, 10.0)):
        np.testing.assert_array_equal(volume.data[c], (volumes[te] * 2.0 - 5).transpose(2, 1, 0))
    np.testing.assert_allclose(volume.meta.affine, expected_ras_affine(geometry), atol=1e-4)
    if shutil.which("dcm2niix"):
        out = tmp_path / "ref"
        out.mkdir()
        subprocess.run(["dcm2niix", "-z", "n", "-f", "ref_%e", "-o", str(out), str(tmp_path / "enh")],
                       check=True, capture_output=True, timeout=60)
        for c, echo in enumerate((1, 2)):
            ref = nib.load(str(out / f"ref_{echo}.nii"))
            _world_to_voxel_values(volume.meta.affine, volume.data[c:c + 1], ref.affine,
                                   np.asarray(ref.dataobj).reshape(ref.shape[:3]))


def test_enhanced_multiframe_with_a_gap_is_refused(tmp_path):
    geometry = dicom_geometry()
    write_enhanced_mr(tmp_path / "mffe.dcm", {5.0: stored_ramp(n_slices=5)}, geometry,
                      positions=_positions(geometry, [0, 1, 2, 3, 5]))
    _refused(tmp_path, "missing slices")


# ------------------------------------------------------------------------------------------- not DICOM


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    (tmp_path / "sub").mkdir()
    assert "1 files searched" in _refused(tmp_path, "no DICOM image series")


def test_empty_folder(tmp_path):
    _refused(tmp_path, "no DICOM image series")


def test_single_damaged_dicom_file(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 20)
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _gdcm_rejects(path: Path, tmp_path: Path) -> bool:
    alone = tmp_path / "gdcm-check"
    alone.mkdir()
    shutil.copy(path, alone)
    try:
        sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(alone))
    except RuntimeError:
        return True
    return False


def test_a_file_gdcm_cannot_scan_does_not_hide_the_series_beside_it(ct_series, tmp_path):
    from pydicom.data import get_testdata_file

    folder, stored, geometry = ct_series
    bad = get_testdata_file("rtdose_1frame.dcm")  # shipped with pydicom; GDCM throws on its folder
    if bad is None or not _gdcm_rejects(Path(bad), tmp_path):
        pytest.skip("this GDCM scans pydicom's rtdose_1frame.dcm; the fallback is not reached")
    shutil.copy(bad, folder / "dose.dcm")
    (folder / "notes.dcm").write_text("not dicom")
    listing = find_series(folder)  # the dose grid is a series of its own; the text file is skipped
    assert sorted(s.modality for s in listing) == ["CT", "RTDOSE"]
    (ct,) = [s for s in listing if s.modality == "CT"]
    for volume in (read_volume(folder, series=ct.uid), read_volume(ct.files[0])):
        np.testing.assert_array_equal(volume.data[0], (stored.astype(float) * 2 - 1024).transpose(2, 1, 0))
        np.testing.assert_allclose(volume.meta.affine, expected_ras_affine(geometry), atol=1e-4)


def test_a_malformed_series_number_elsewhere_in_the_folder_is_harmless(tmp_path):
    geometry = dicom_geometry()
    stored = stored_ramp()
    paths = write_dicom_series(tmp_path / "a", stored, geometry, description="good")
    other = write_dicom_series(tmp_path / "b", stored, geometry, description="odd")
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    for p in other:
        ds = pydicom.dcmread(p)
        # an IS value no integer parser accepts, stored raw as a faulty writer would
        ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"1A", 0, ds.is_implicit_VR, ds.is_little_endian)
        ds.save_as(p)
        shutil.move(str(p), str(tmp_path / "a" / f"odd-{p.name}"))
    volume = read_volume(paths[0])  # a file: only its own series is looked at
    np.testing.assert_array_equal(volume.data[0], stored.transpose(2, 1, 0))
    listing = find_series(tmp_path / "a")
    assert sorted(s.description for s in listing) == ["good", "odd"]
    assert [s.number for s in listing if s.description == "odd"] == [None]
