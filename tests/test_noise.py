"""Noise models and the noise-level estimator, measured on known noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidiff.noise import add_ct_noise, add_noise, add_rician, add_rician_numpy, estimate_sigma
from medidiff.phantom import head_phantom


def test_rician_is_magnitude_of_complex_gaussian() -> None:
    g = torch.Generator().manual_seed(0)
    zero = torch.zeros(200_000)
    rayleigh = add_rician(zero, 0.1, g)
    # pure-noise magnitude is Rayleigh: mean sigma*sqrt(pi/2), never negative
    assert float(rayleigh.min()) >= 0
    assert float(rayleigh.mean()) == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.01)
    bright = add_rician(torch.ones(200_000), 0.05, g)
    assert float(bright.std()) == pytest.approx(0.05, rel=0.02)  # Gaussian-like at high SNR


def test_noncentral_chi_has_higher_floor_with_more_coils() -> None:
    rng = np.random.default_rng(0)
    one = add_rician_numpy(np.zeros(100_000), 0.1, rng, n_coils=1).mean()
    four = add_rician_numpy(np.zeros(100_000), 0.1, rng, n_coils=4).mean()
    assert four > one * 1.5


def _inplane_power(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Power spectrum of (64, 64, Z) noise averaged over its axial slices, and each bin's radial frequency."""
    power = (torch.fft.fft2(noise.movedim(-1, 0)).abs() ** 2).mean(dim=0)
    f = torch.sqrt(torch.fft.fftfreq(64)[:, None] ** 2 + torch.fft.fftfreq(64)[None, :] ** 2)
    return power, f


def _neighbour_corr(
    smoothness: float,
    ramp: float | tuple[float, float] = 1.0,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 64, 8),
) -> float:
    """Correlation of in-plane neighbours (first axis) in unit CT noise of this kernel and ramp."""
    n = add_ct_noise(torch.zeros(shape), 1.0, torch.Generator().manual_seed(seed), smoothness=smoothness, ramp=ramp)
    return float(torch.corrcoef(torch.stack([n[:-1].flatten(), n[1:].flatten()]))[0, 1])


@pytest.mark.parametrize("smoothness", [0.0, 1.0, 2.0])
def test_ct_noise_has_requested_std_zero_mean_and_fbp_texture(smoothness: float) -> None:
    x0 = torch.zeros(64, 64, 16)
    noise = add_ct_noise(x0, 0.025, torch.Generator().manual_seed(0), smoothness=smoothness) - x0
    assert float(noise.std()) == pytest.approx(0.025, rel=0.02)
    assert abs(float(noise.mean())) < 1e-3
    # FBP noise has a ramp-shaped spectrum: almost no power near zero frequency
    power, f = _inplane_power(noise)
    low = float(power[(f > 0) & (f < 0.04)].mean())
    mid = float(power[(f > 0.15) & (f < 0.25)].mean())
    assert low < 0.35 * mid
    # slices are independent
    across = float(torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1])
    assert abs(across) < 0.05


def test_softer_ct_kernel_gives_more_neighbour_correlation() -> None:
    assert _neighbour_corr(smoothness=0.0) < _neighbour_corr(smoothness=1.0) < _neighbour_corr(smoothness=2.0)


def test_ct_noise_without_ramp_and_kernel_is_white() -> None:
    noise = add_ct_noise(torch.zeros(64, 64, 16), 1.0, torch.Generator().manual_seed(0), smoothness=0.0, ramp=0.0)
    assert float(noise.std()) == pytest.approx(1.0, rel=0.02)
    power, f = _inplane_power(noise)
    low = float(power[(f > 0) & (f < 0.1)].mean())
    high = float(power[(f > 0.3) & (f < 0.45)].mean())
    assert low == pytest.approx(high, rel=0.2)


def test_lower_ramp_exponent_gives_coarser_grain() -> None:
    assert _neighbour_corr(1.0, ramp=1.0) < _neighbour_corr(1.0, ramp=0.5) < _neighbour_corr(1.0, ramp=0.0)


def test_ct_ramp_range_draws_between_its_ends_and_a_point_range_keeps_the_fbp_stream() -> None:
    x0 = torch.zeros(4, 1, 32, 32, 4)
    fbp = add_noise(x0, 1.0, "ct", torch.Generator().manual_seed(3))
    assert torch.equal(fbp, add_noise(x0, 1.0, "ct", torch.Generator().manual_seed(3), ct_ramp=(1.0, 1.0)))

    def corr(ramp: float | tuple[float, float], seed: int) -> float:
        return _neighbour_corr(1.0, ramp=ramp, seed=seed, shape=(64, 64, 4))

    # the same seed gives the same white noise, so the grain of a drawn exponent lies between the ends
    drawn = [corr((0.0, 1.0), seed) for seed in range(8)]
    assert all(corr(1.0, seed) <= d <= corr(0.0, seed) for seed, d in enumerate(drawn))
    assert np.ptp(drawn) > 0.05  # the exponent is drawn, not fixed


def test_add_noise_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="rician"):
        add_noise(torch.zeros(4), 0.1, "poisson")  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma", [0.03, 0.05, 0.09])
def test_mr_estimator_on_phantom(sigma: float) -> None:
    # the phantom is piecewise constant with thin layers: oblique step edges leak into the detail
    # band far more than in real anatomy (the real-brain test below holds 10 %)
    clean = head_phantom((80, 96, 80), seed=2)
    clean = clean / np.percentile(clean, 99.9)
    noisy = add_rician_numpy(clean, sigma, np.random.default_rng(1))
    est = estimate_sigma(noisy, "MR")
    assert abs(est - sigma) / sigma < 0.3, est


@pytest.mark.parametrize("sigma", [0.03, 0.09])
def test_mr_estimator_within_10_percent_on_real_brain(sigma: float) -> None:
    import nibabel as nib
    from conftest import reference_scan

    clean = nib.load(str(reference_scan("colin27_ch2_T1_brain_1mm.nii.gz"))).get_fdata(dtype=np.float32)
    clean = clean / np.percentile(clean, 99.9)
    est = estimate_sigma(add_rician_numpy(clean, sigma, np.random.default_rng(0)), "MR")
    assert abs(est - sigma) / sigma < 0.1, est


def test_ct_estimator_on_correlated_noise() -> None:
    rng = np.random.default_rng(0)
    body = np.full((96, 96, 24), -1000.0, np.float32)
    yy, xx = np.mgrid[:96, :96]
    body[((xx - 48) ** 2 + (yy - 48) ** 2) < 40**2] = 40.0
    noisy = add_ct_noise(torch.from_numpy(body), 30.0, torch.Generator().manual_seed(int(rng.integers(100)))).numpy()
    est = estimate_sigma(noisy, "CT")
    assert est == pytest.approx(30.0, rel=0.2)


def test_estimator_refuses_2d_and_tiny() -> None:
    with pytest.raises(ValueError):
        estimate_sigma(np.zeros((8, 8)), "MR")
    with pytest.raises(ValueError):
        estimate_sigma(np.zeros((2, 8, 8)), "MR")


def test_recorrupted_input_and_target_noise_are_uncorrelated_with_the_right_levels() -> None:
    from medidiff.noise import RECORRUPT_MARGIN, recorrupt

    g = torch.Generator().manual_seed(0)
    own = torch.tensor([0.02, 0.02, 0.02, 0.0])
    sigma = torch.tensor([0.05, 0.01, 0.05, 0.05])  # the second is below the margin and is raised
    clean = torch.full((4, 1, 40, 40, 40), 0.5)
    y = clean + own.view(-1, 1, 1, 1, 1) * torch.randn(clean.shape, generator=g)
    noisy, target, level = recorrupt(y, own, sigma, torch.tensor([False, False, True, False]), g)
    np.testing.assert_allclose(level.numpy(), [0.05, RECORRUPT_MARGIN * 0.02, 0.05, 0.05], rtol=1e-6)
    for b in range(4):
        n_in = (noisy[b] - clean[b]).flatten()
        n_out = (target[b] - clean[b]).flatten()
        assert abs(float(n_in.std()) - float(level[b])) < 0.03 * float(level[b])
        if own[b] > 0:  # zero correlation: the MSE to the target is the MSE to the clean scan plus a constant
            corr = float(torch.corrcoef(torch.stack([n_in, n_out]))[0, 1])
            assert abs(corr) < 0.02, corr
            want = float(own[b] ** 2 * level[b] ** 2 / (level[b] ** 2 - own[b] ** 2)) ** 0.5
            assert abs(float(n_out.std()) - want) < 0.03 * want
        else:  # a clean patch (phantom) keeps its clean target
            assert torch.equal(target[b], y[b])
    # at 0.5 with sigma 0.05 Rician magnitude is nearly Gaussian; its bias is positive
    assert 0 < float((noisy[2] - clean[2]).mean()) < 0.01
