"""The scoring helpers of the scripts in benchmarks/ that docs/design.md quotes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from ct_dicom_series import PADDING_HU, sitk_affine_ras, write_dicom  # noqa: E402
from guided_radius_grid import recorrupt  # noqa: E402
from mr_draws import bm4d_key  # noqa: E402
from mr_reference_noise import draws  # noqa: E402
from network_sigma_scale import ssim_noisy_reference  # noqa: E402

from medidiff import metrics, read_volume  # noqa: E402
from medidiff.phantom import head_phantom  # noqa: E402


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean = head_phantom((40, 48, 40), seed=3).astype(np.float64)
    clean /= np.percentile(clean, 99.9)
    test = clean + np.random.default_rng(1).normal(0.0, 0.03, clean.shape)
    return clean, test, metrics.foreground_mask(clean, "MR")


def test_ssim_against_a_clean_target_is_the_benchmark_ssim(pair) -> None:
    clean, test, mask = pair
    expected = metrics.ssim(clean, test, mask, data_range=1.0)
    assert ssim_noisy_reference(clean, test, mask, 0.0) == pytest.approx(expected, abs=1e-12)


def test_ssim_against_a_noisy_target_is_corrected_back_towards_the_clean_one(pair) -> None:
    clean, test, mask = pair
    truth = metrics.ssim(clean, test, mask, data_range=1.0)
    s = 0.04
    noisy_target = clean + np.random.default_rng(2).normal(0.0, s, clean.shape)
    naive = ssim_noisy_reference(noisy_target, test, mask, 0.0)
    corrected = ssim_noisy_reference(noisy_target, test, mask, s * s)
    assert naive < truth - 0.01  # the target's noise costs the naive score
    assert abs(corrected - truth) < 0.005


def test_recorrupted_input_and_target_have_uncorrelated_noise_of_the_stated_size() -> None:
    # a bright scan (the Rician input is close to Gaussian there) with noise of its own, 0.02
    r = (0.6 + np.random.default_rng(5).normal(0.0, 0.02, (48, 48, 48))).astype(np.float32)
    y, target, target_var = recorrupt(r, own=0.02, level=0.05, seed=[0, 1])
    n_in, n_t = (y - 0.6).ravel(), (target - 0.6).ravel()  # both noises, the scan's own included
    assert float(np.std(n_in)) == pytest.approx(0.05, rel=0.03)
    assert float(np.var(n_t)) == pytest.approx(target_var, rel=0.03)
    assert abs(float(np.corrcoef(n_in, n_t)[0, 1])) < 0.02


def test_bm4d_cache_key_changes_with_everything_bm4d_s_score_depends_on(pair) -> None:
    from types import SimpleNamespace

    clean, test, mask = pair

    def sample(**changes):
        fields = {"noisy": test, "clean": clean, "mask": mask, "sigma_true": 0.03} | changes
        return SimpleNamespace(**fields)

    key = bm4d_key(sample(), "4.2.5")
    assert bm4d_key(sample(noisy=test.copy()), "4.2.5") == key  # same content, same key
    other_draw = test.copy()
    other_draw[0, 0, 0] += 1e-6
    assert bm4d_key(sample(noisy=other_draw), "4.2.5") != key
    assert bm4d_key(sample(clean=clean * 1.001), "4.2.5") != key
    assert bm4d_key(sample(mask=~mask), "4.2.5") != key
    assert bm4d_key(sample(sigma_true=0.05), "4.2.5") != key
    assert bm4d_key(sample(), "4.2.6") != key


def test_noisy_reference_draws_add_each_level_on_top_of_the_reference() -> None:
    # bright flat tissue: Rician noise there is close to Gaussian of the stated std
    clean = np.full((40, 40, 40), 0.7, dtype=np.float32)
    reference, inputs = draws(clean, 2.0, [3.0, 9.0], seed=4)
    assert float(np.std(reference - clean)) == pytest.approx(0.02, rel=0.05)
    for level, noisy in zip([0.03, 0.09], inputs, strict=True):
        assert float(np.std(noisy - reference)) == pytest.approx(level, rel=0.05)
        assert abs(float(np.corrcoef((noisy - reference).ravel(), (reference - clean).ravel())[0, 1])) < 0.03
    again, _ = draws(clean, 2.0, [3.0, 9.0], seed=4)
    np.testing.assert_array_equal(reference, again)


def test_the_benchmark_dicom_series_reads_back_as_written(tmp_path) -> None:
    rng = np.random.default_rng(2)
    hu = np.rint(rng.normal(0.0, 300.0, (20, 24, 6))).astype(np.float32)
    hu[:3] = PADDING_HU
    write_dicom(hu, (0.75, 0.8, 1.5), tmp_path / "series")
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.data[0], hu)
    assert volume.meta.modality == "CT"
    shape, affine = sitk_affine_ras(tmp_path / "series")
    assert shape == hu.shape
    np.testing.assert_allclose(volume.meta.affine, affine, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.75, 0.8, 1.5], atol=1e-6)
