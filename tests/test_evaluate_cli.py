"""``medidiff evaluate``: agreement with an independent computation of the definitions, settings,
JSON output, the no-reference mode and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medidiff.cli import main
from medidiff.noise import add_rician_numpy


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else affine), path)
    return str(path)


def _head(shape: tuple[int, int, int] = (30, 34, 26)) -> np.ndarray:
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt((grid[0] / 0.8) ** 2 + (grid[1] / 0.85) ** 2 + (grid[2] / 0.75) ** 2)
    image = np.where(radius < 1, 0.6 + 0.3 * np.cos(5 * grid[0]) * np.sin(4 * grid[1]), 0.0)
    return image.astype(np.float32)


def _ssim_reference(x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """Independent SSIM: uniform 7^3 window, sample covariance, on the mask's bounding box."""
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    x, y = x[box].astype(np.float64), y[box].astype(np.float64)
    mean = lambda a: ndimage.uniform_filter(a, size=7, mode="reflect")  # noqa: E731
    ux, uy = mean(x), mean(y)
    c = 343 / 342
    vx, vy, vxy = c * (mean(x * x) - ux * ux), c * (mean(y * y) - uy * uy), c * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(smap[mask[box]].mean())


def _psnr_reference(x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    return 10 * math.log10(data_range**2 / np.mean((x[mask].astype(np.float64) - y[mask]) ** 2))


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def mr_files(tmp_path: Path) -> dict[str, str]:
    clean = _head()
    rng = np.random.default_rng(0)
    noisy = add_rician_numpy(clean, 0.05, rng)
    denoised = 0.5 * (noisy + clean)  # a "denoiser" that halves the error
    mask = ndimage.binary_erosion(clean > 0.2, iterations=2)
    return {
        "ref": _save(tmp_path / "ref.nii.gz", clean),
        "noisy": _save(tmp_path / "noisy.nii.gz", noisy),
        "den": _save(tmp_path / "den.nii.gz", denoised),
        "mask": _save(tmp_path / "mask.nii.gz", mask.astype(np.float32)),
    }


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def test_json_agrees_with_independent_definitions(mr_files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "--reference", mr_files["ref"], "--input", mr_files["den"], "--mask", mr_files["mask"]]
    out = _run_json(capsys, [*argv, "--data-range", "1", "--json"])
    assert isinstance(out, dict)
    ref, den, mask = _load(mr_files["ref"]), _load(mr_files["den"]), _load(mr_files["mask"]) > 0.5
    assert abs(out["psnr"] - _psnr_reference(ref, den, mask, 1.0)) < 0.01
    assert abs(out["ssim"] - _ssim_reference(ref, den, mask, 1.0)) < 0.002
    settings = out["settings"]
    assert settings["data_range"] == 1.0 and settings["data_range_source"] == "given"
    assert settings["modality"] == "MR" and settings["window"] is None
    assert settings["mask_voxels"] == int(mask.sum())
    assert "7-voxel" in settings["ssim"]


def test_default_data_range_is_reference_max_minus_min(
    mr_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    scaled = _load(mr_files["ref"]) * 120.0
    ref = _save(Path(mr_files["ref"]).with_name("ref120.nii.gz"), scaled)
    den = _save(Path(mr_files["ref"]).with_name("den120.nii.gz"), _load(mr_files["den"]) * 120.0)
    out = _run_json(capsys, ["evaluate", "--reference", ref, "--input", den, "--mask", "none", "--json"])
    data_range = float(scaled.max() - scaled.min())
    assert out["settings"]["data_range"] == pytest.approx(data_range)
    everything = np.ones(scaled.shape, bool)
    assert abs(out["psnr"] - _psnr_reference(scaled, _load(den), everything, data_range)) < 0.01
    assert abs(out["ssim"] - _ssim_reference(scaled, _load(den), everything, data_range)) < 0.002


def test_several_inputs_give_a_list_and_text_shows_settings(
    mr_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--reference", mr_files["ref"], "--input", mr_files["noisy"], "--input", mr_files["den"]]
    out = _run_json(capsys, [*argv, "--json", "--monai-ssim"])
    assert isinstance(out, list) and len(out) == 2
    assert all({"psnr", "ssim", "ssim_monai", "settings"} <= set(row) for row in out)
    assert out[1]["psnr"] == pytest.approx(out[0]["psnr"] + 20 * math.log10(2), abs=0.01)
    assert out[0]["settings"]["mask"].startswith("auto")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "data range R" in text and "mask: auto" in text and "PSNR" in text
    assert mr_files["den"] in text


def test_ct_uses_the_hu_window_and_range_2000(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x, y = np.meshgrid(np.arange(32) - 16, np.arange(32) - 16, indexing="ij")
    slice_ = np.full((32, 32), -1024.0)
    slice_[x**2 + y**2 < 12**2] = 40.0
    slice_[(x - 4) ** 2 + y**2 < 3**2] = 1800.0  # bone above the window
    clean = np.repeat(slice_[:, :, None], 12, axis=2).astype(np.float32)
    test = clean + 30.0 * np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
    ref_path, test_path = _save(tmp_path / "ct.nii.gz", clean), _save(tmp_path / "ct_test.nii.gz", test)
    out = _run_json(capsys, ["evaluate", "--reference", ref_path, "--input", test_path, "--mask", "none", "--json"])
    assert out["settings"]["modality"] == "CT"
    assert out["settings"]["window"] == [-1000.0, 1000.0]
    assert out["settings"]["data_range"] == 2000.0
    everything = np.ones(clean.shape, bool)
    clipped = np.clip(clean, -1000, 1000), np.clip(test, -1000, 1000)
    assert abs(out["psnr"] - _psnr_reference(*clipped, everything, 2000.0)) < 0.01
    assert abs(out["ssim"] - _ssim_reference(*clipped, everything, 2000.0)) < 0.002
    # an explicit window overrides the default
    out = _run_json(capsys, ["evaluate", "--reference", ref_path, "--input", test_path, "--window=-160,240", "--json"])
    assert out["settings"]["data_range"] == 400.0


def test_no_reference_mode(mr_files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_json(capsys, ["evaluate", "--input", mr_files["noisy"], "--json"])
    assert "psnr" not in out
    assert out["background_sigma_rayleigh"] == pytest.approx(0.05, rel=0.15)
    assert out["background_voxels"] > 1000
    argv = ["evaluate", "--noisy", mr_files["noisy"], "--input", mr_files["den"], "--json"]
    out = _run_json(capsys, [*argv, "--roi", mr_files["mask"], mr_files["mask"]])
    assert {"residual_corr_output", "residual_corr_structure", "residual_std", "cnr"} <= set(out)
    assert out["background_std"] < 0.05  # half the background noise
    assert main(["evaluate", "--input", mr_files["noisy"]]) == 0
    assert "no-reference" in capsys.readouterr().out


def test_geometry_mismatch_exits_2_with_one_line(
    mr_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shifted = np.eye(4)
    shifted[:3, 3] = [0.5, 0.0, 0.0]
    moved = _save(tmp_path / "moved.nii.gz", _load(mr_files["den"]), shifted)
    assert main(["evaluate", "--reference", mr_files["ref"], "--input", moved]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "affine" in err and "moved.nii.gz" in err
    small = _save(tmp_path / "small.nii.gz", _head((20, 20, 20)))
    assert main(["evaluate", "--reference", mr_files["ref"], "--input", small]) == 2
    assert "shape" in capsys.readouterr().err


def test_a_noisy_scan_with_another_number_of_volumes_is_refused(
    mr_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, den = _load(mr_files["ref"]), _load(mr_files["den"])
    ref4 = _save(tmp_path / "ref4.nii.gz", np.stack([ref, ref], axis=-1))
    den4 = _save(tmp_path / "den4.nii.gz", np.stack([den, den], axis=-1))
    argv = ["evaluate", "--reference", ref4, "--input", den4, "--noisy", mr_files["noisy"]]
    assert main(argv) == 2
    assert "volumes" in capsys.readouterr().err


def test_bad_options_are_user_errors(mr_files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "--reference", mr_files["ref"], "--input", mr_files["den"]]
    assert main([*base, "--window", "abc"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main([*base, "--window=-inf,inf"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main([*base, "--data-range", "0"]) == 2
    assert "data range" in capsys.readouterr().err
    assert main([*base, "--mask", str(Path(mr_files["ref"]).with_name("nope.nii.gz"))]) == 2


def test_no_reference_mr_mask_keeps_a_noisy_rician_background_out() -> None:
    from medidiff.evaluation import evaluate
    from medidiff.noise import add_rician_numpy
    from medidiff.phantom import head_phantom
    from medidiff.volume import Volume

    clean = head_phantom((48, 56, 48), seed=0).astype(np.float32)
    clean[clean < 0.15 * clean.max()] = 0.0  # skull-stripped: zero outside the brain
    clean /= np.percentile(clean, 99.9)
    noisy = add_rician_numpy(clean, 0.09, np.random.default_rng(0)).astype(np.float32)
    row = evaluate(None, [Volume.from_array(clean)], noisy=Volume.from_array(noisy), modality="MR")[0]
    from medidiff.metrics import foreground_mask

    inside, brain = row["settings"]["mask_voxels"], int(foreground_mask(clean, "MR").sum())
    # the brain and a rim from the smoothing, not the whole box (the rule alone took 99.7 % of it)
    assert brain < inside < 0.5 * clean.size, (inside, brain, clean.size)
    assert np.isfinite(row["background_std"])
