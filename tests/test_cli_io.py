"""`medidiff info` and `medidiff convert`: output, --series, --force, one-line errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from io_fixtures import dicom_geometry, oblique_lps_affine, stored_ramp, write_dicom_series

from medidiff.cli import main


@pytest.fixture()
def nifti(tmp_path):
    raw = np.random.default_rng(0).integers(-1024, 2000, (6, 5, 4), dtype=np.int16)
    img = nib.Nifti1Image(raw, oblique_lps_affine())
    img.header.set_slope_inter(1.0, 0.0)
    path = tmp_path / "scan.nii.gz"
    img.to_filename(str(path))
    return path, raw


@pytest.fixture()
def two_series(tmp_path):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, stored_ramp(), dicom_geometry(), description="axial", series_number=2,
                       slope=1, intercept=-1024, name_prefix="a")
    write_dicom_series(folder, stored_ramp(n_slices=4), dicom_geometry(), description="scout",
                       series_number=1, name_prefix="b")
    return folder


def test_info_text(nifti, capsys):
    path, raw = nifti
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "6 x 5 x 4 (1 volume)" in text and "int16" in text
    assert f"{raw.min():g} .. {raw.max():g}" in text and "orientation:" in text


def test_info_json(nifti, capsys):
    path, raw = nifti
    assert main(["info", str(path), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["shape"] == [6, 5, 4] and desc["n_volumes"] == 1 and desc["format"] == "nifti"
    assert desc["dtype"] == "int16" and desc["min"] == raw.min() and desc["max"] == raw.max()
    assert desc["orientation"] == "".join(nib.aff2axcodes(oblique_lps_affine()))
    np.testing.assert_allclose(desc["spacing"], (0.9, 1.1, 2.5), atol=1e-6)
    np.testing.assert_allclose(desc["affine"], oblique_lps_affine(), atol=1e-5)
    assert desc["modality"].startswith("guessed ")


def test_info_dicom_series_choice(two_series, capsys):
    assert main(["info", str(two_series)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 DICOM series" in err and "'axial'" in err and "'scout'" in err
    assert main(["info", str(two_series), "--series", "1", "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["series_description"] == "axial" and desc["modality"] == "CT" and desc["shape"] == [6, 5, 8]
    assert desc["min"] == stored_ramp().min() - 1024


def test_convert_dicom_and_force(two_series, tmp_path, capsys):
    out = tmp_path / "axial.nii.gz"
    assert main(["convert", str(two_series), str(out), "--series", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    img = nib.load(str(out))
    assert img.shape == (6, 5, 8) and img.get_data_dtype() == np.int16
    assert main(["convert", str(two_series), str(out), "--series", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(two_series), str(out), "--series", "0", "--force"]) == 0
    assert nib.load(str(out)).shape == (6, 5, 4)


def test_convert_refuses_other_output_formats(nifti, tmp_path, capsys):
    path, _ = nifti
    assert main(["convert", str(path), str(tmp_path / "out.nrrd")]) == 2
    assert "NIfTI only" in capsys.readouterr().err
    assert not (tmp_path / "out.nrrd").exists()


def test_convert_nifti_is_exact(nifti, tmp_path):
    path, _ = nifti
    out = tmp_path / "copy.nii.gz"
    assert main(["convert", str(path), str(out)]) == 0
    assert gzip.open(path).read() == gzip.open(out).read()


@pytest.mark.parametrize("case", ["missing", "text", "truncated"])
def test_subprocess_errors_are_one_line(tmp_path, case):
    path = tmp_path / "scan.nii.gz"
    if case == "text":
        path.write_text("not an image\n")
    elif case == "truncated":
        raw = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
        nib.Nifti1Image(raw, np.eye(4)).to_filename(str(path))
        path.write_bytes(path.read_bytes()[:3000])
    result = subprocess.run([sys.executable, "-m", "medidiff", "info", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("medidiff: error: ") and str(path) in result.stderr
