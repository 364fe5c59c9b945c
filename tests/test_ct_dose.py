"""Projection-domain low-dose CT simulation: noise level, zero mean, noise only, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff import ct_dose
from medidiff.errors import MedidiffError

ANGLES = 120  # fewer than the default, to keep the tests fast


def _water_phantom(n_slices: int = 4) -> np.ndarray:
    """A 48x44 slice stack: an elliptical water body (0 HU) with a bone insert, air outside."""
    x, y = np.meshgrid(np.arange(48) - 24, np.arange(44) - 22, indexing="ij")
    image = np.full((48, 44), -1000.0, dtype=np.float32)
    image[x**2 / 22**2 + y**2 / 20**2 < 1] = 0.0
    image[(x - 8) ** 2 + y**2 < 9] = 900.0
    return np.repeat(image[:, :, None], n_slices, axis=2)


def test_hu_to_mu() -> None:
    mu = ct_dose.hu_to_mu(np.array([-1024.0, -1000.0, 0.0, 1000.0]))
    assert mu.tolist() == pytest.approx([0.0, 0.0, ct_dose.MU_WATER_PER_MM, 2 * ct_dose.MU_WATER_PER_MM])


@pytest.mark.parametrize("target", [20.0, 50.0])
def test_noise_level_reaches_target_and_is_zero_mean(target: float) -> None:
    clean = _water_phantom()
    result = ct_dose.simulate_low_dose(
        clean, (1.5, 1.5, 2.0), np.random.default_rng(0), target_std_hu=target, n_angles=ANGLES
    )
    noise = result.noisy - clean
    soft = clean == 0.0
    assert np.std(noise[soft]) == pytest.approx(target, rel=0.2)
    assert result.noise_std_hu == pytest.approx(float(np.std(noise[soft])), rel=1e-4)
    assert abs(float(np.mean(noise[soft]))) < 0.1 * target
    assert result.i0 > 0


def test_only_the_noise_changes() -> None:
    """At a huge dose the added noise vanishes: FBP's own errors cancel (clean recon subtracted)."""
    clean = _water_phantom(2)
    result = ct_dose.simulate_low_dose(clean, (1.0, 1.0, 1.0), np.random.default_rng(1), i0=1e14, n_angles=ANGLES)
    assert np.abs(result.noisy - clean).max() < 0.5
    assert result.noisy.shape == clean.shape and result.noisy.dtype == np.float32


def test_noise_scales_with_dose_and_is_reproducible() -> None:
    clean = _water_phantom(2)

    def run(i0: float, seed: int) -> np.ndarray:
        return ct_dose.simulate_low_dose(
            clean, (1.5, 1.5, 1.5), np.random.default_rng(seed), i0=i0, n_angles=ANGLES
        ).noisy

    low, high = run(1e4, 0), run(4e4, 0)
    soft = clean == 0.0
    ratio = np.std((low - clean)[soft]) / np.std((high - clean)[soft])
    assert ratio == pytest.approx(2.0, rel=0.15)  # std ~ 1/sqrt(I0)
    assert np.array_equal(run(1e4, 3), run(1e4, 3))
    assert not np.array_equal(run(1e4, 3), run(1e4, 4))


def test_noise_is_correlated_in_plane_not_across_slices() -> None:
    clean = _water_phantom(6)
    noise = ct_dose.simulate_low_dose(clean, (1, 1, 1), np.random.default_rng(2), i0=2e4, n_angles=ANGLES).noisy - clean
    inner = noise[16:32, 14:30]
    in_plane = np.corrcoef(inner[:-1].ravel(), inner[1:].ravel())[0, 1]
    across = np.corrcoef(inner[..., :-1].ravel(), inner[..., 1:].ravel())[0, 1]
    assert abs(across) < 0.1
    assert abs(in_plane) > abs(across)


def test_slice_axis_is_respected() -> None:
    clean = np.moveaxis(_water_phantom(3), 2, 0)  # slices along axis 0
    result = ct_dose.simulate_low_dose(
        clean, (2.0, 1.0, 1.0), np.random.default_rng(0), target_std_hu=30.0, axis=0, n_angles=ANGLES
    )
    assert result.noisy.shape == clean.shape
    assert result.noise_std_hu == pytest.approx(30.0, rel=0.2)


def test_user_errors() -> None:
    clean = _water_phantom(1)
    rng = np.random.default_rng(0)
    with pytest.raises(MedidiffError, match="exactly one"):
        ct_dose.simulate_low_dose(clean, (1, 1, 1), rng)
    with pytest.raises(MedidiffError, match="exactly one"):
        ct_dose.simulate_low_dose(clean, (1, 1, 1), rng, i0=1e4, target_std_hu=20)
    with pytest.raises(MedidiffError, match="i0"):
        ct_dose.simulate_low_dose(clean, (1, 1, 1), rng, i0=-1.0)
    with pytest.raises(MedidiffError, match="soft tissue"):
        ct_dose.simulate_low_dose(np.full((16, 16, 2), -1000.0), (1, 1, 1), rng, target_std_hu=20)
    with pytest.raises(MedidiffError, match="filter"):
        ct_dose.simulate_low_dose(clean, (1, 1, 1), rng, i0=1e4, filter_name="shepp")  # type: ignore[arg-type]
