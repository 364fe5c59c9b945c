"""Guided averaging (medidiff.refine) and its place after the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidiff import refine
from medidiff.errors import MedidiffError
from medidiff.inference import DenoiseOptions
from medidiff.noise import add_rician_numpy
from medidiff.refine import guided_average


def test_flat_guide_averages_white_noise_over_the_neighbourhood() -> None:
    rng = np.random.default_rng(0)
    clean = np.full((30, 30, 30), 0.5, np.float32)
    noisy = clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)
    out = guided_average(noisy, clean, 0.05, rician=False, radius=3.7, data_smoothing=0)
    inner = (slice(3, -3),) * 3
    # 203 equally weighted neighbours in a ball of 3.7 voxels: the noise std falls by sqrt(203) = 14.2
    assert float(np.std(out[inner])) == pytest.approx(0.05 / np.sqrt(203), rel=0.1)
    assert float(np.mean(out[inner])) == pytest.approx(0.5, abs=1e-3)


def test_the_neighbourhood_is_a_ball() -> None:
    assert [len(refine.neighbourhood(r)) for r in (1, 1.5, 1.8, 2, 3, 3.7)] == [7, 19, 27, 33, 123, 203]
    ball = refine.neighbourhood(3.7)
    assert (0, 0, 0) in ball and (3, 2, 0) in ball and (3, 2, 1) not in ball and (2, 2, 2) in ball
    assert {(-i, -j, -k) for i, j, k in ball} == set(ball)  # symmetric


def test_an_edge_in_the_guide_keeps_the_two_sides_apart() -> None:
    rng = np.random.default_rng(1)
    clean = np.zeros((20, 20, 20), np.float32)
    clean[:, :, 10:] = 1.0  # a step 20 sigma high
    noisy = clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)
    out = guided_average(noisy, clean, 0.05, rician=False)  # the default ball
    # next to the edge each side is still its own level: nothing leaks across (exp(-400) weights)
    assert float(np.abs(out[:, :, 9].mean())) < 0.01
    assert float(np.abs(out[:, :, 10].mean() - 1.0)) < 0.01
    assert float(np.std(out[:, :, 9])) < 0.05 / 3  # and the noise was still averaged on its side


def test_rician_mean_is_corrected_for_the_noise_floor() -> None:
    clean = np.full((24, 24, 24), 0.1, np.float32)  # SNR 2: the plain mean of the magnitude is biased
    sigma = 0.05
    noisy = add_rician_numpy(clean, sigma, np.random.default_rng(2)).astype(np.float32)
    inner = (slice(2, -2),) * 3
    plain = guided_average(noisy, clean, sigma, rician=False)[inner].mean()
    corrected = guided_average(noisy, clean, sigma, rician=True)[inner].mean()
    assert plain > 0.11  # E|y| is above the signal at this SNR
    assert corrected == pytest.approx(0.1, abs=0.006)


def test_slabs_join_without_a_seam(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    guide = rng.uniform(0, 1, (23, 9, 11)).astype(np.float32)
    noisy = guide + rng.normal(0, 0.1, guide.shape).astype(np.float32)
    whole = guided_average(noisy, guide, 0.1, rician=True, radius=3.7)
    monkeypatch.setattr(refine, "SLAB", 5)  # 23 = 4 full slabs and one of 3
    np.testing.assert_allclose(guided_average(noisy, guide, 0.1, rician=True, radius=3.7), whole, rtol=1e-6, atol=1e-7)


def test_matches_a_direct_sum_at_one_voxel() -> None:
    rng = np.random.default_rng(4)
    guide = rng.uniform(0, 1, (9, 9, 9)).astype(np.float32)
    noisy = guide + rng.normal(0, 0.2, guide.shape).astype(np.float32)
    out = guided_average(noisy, guide, 0.2, rician=False, radius=1.8, strength=1.5, data_smoothing=0)
    c = (4, 5, 3)
    block = (slice(3, 6), slice(4, 7), slice(2, 5))  # radius 1.8 reaches the corners: the whole 3x3x3 block
    w = np.exp(-((guide[block] - guide[c]) ** 2) / (1.5 * 0.2) ** 2)
    assert out[c] == pytest.approx(float((w * noisy[block]).sum() / w.sum()), rel=1e-5)


def test_slope_over_sigma_reads_a_ramp_per_voxel_of_the_finest_axis() -> None:
    ramp = np.broadcast_to((0.02 * np.arange(20, dtype=np.float32))[:, None, None], (20, 16, 12)).copy()
    inner = (slice(5, -5), slice(5, -5), slice(5, -5))
    t = refine.slope_over_sigma(torch.from_numpy(ramp), 0.05).numpy()
    np.testing.assert_allclose(t[inner], 0.4, rtol=1e-4)  # 0.02 per voxel over sigma 0.05
    # the same ramp along 3 mm slices (1 x 1 x 3 mm): 0.02 per 3 mm is 0.02 / 3 per finest voxel
    along_z = np.ascontiguousarray(np.moveaxis(ramp, 0, 2))
    t3 = refine.slope_over_sigma(torch.from_numpy(along_z), 0.05, spacing=(1.0, 1.0, 3.0)).numpy()
    np.testing.assert_allclose(t3[5:-5, 5:-5, 5:-5], 0.4 / 3, rtol=1e-3)


def test_sloped_range_kernel_is_the_flat_width_on_a_flat_guide_and_the_top_width_on_a_steep_one() -> None:
    rng = np.random.default_rng(9)
    sigma = 0.05
    flat = np.full((16, 16, 16), 0.5, np.float32)
    noisy = flat + rng.normal(0, sigma, flat.shape).astype(np.float32)
    sloped = {"strength_slope": 0.15, "strength_max": 1.4}
    np.testing.assert_allclose(
        guided_average(noisy, flat, sigma, rician=False, strength=0.7, **sloped),
        guided_average(noisy, flat, sigma, rician=False, strength=0.7), rtol=1e-5, atol=1e-6,
    )
    # a ramp of 0.5 sigma per voxel with a little texture: t = 0.5, so h = 0.7 + 0.15 * 0.5 = 0.775
    x = np.arange(16, dtype=np.float32)
    ramp = 0.5 + 0.025 * x[:, None, None] + 0.01 * np.sin(x)[None, :, None]
    guide = np.broadcast_to(ramp, (16, 16, 16)).astype(np.float32)
    noisy = guide + rng.normal(0, sigma, guide.shape).astype(np.float32)
    inner = (slice(4, -4),) * 3
    out = guided_average(noisy, guide, sigma, rician=False, strength=0.7, **sloped)
    t = refine.slope_over_sigma(torch.from_numpy(guide), sigma).numpy()
    assert np.all(np.abs(t[inner] - 0.5) < 0.02)
    same_width = guided_average(noisy, guide, sigma, rician=False, strength=float(0.7 + 0.15 * t[inner].mean()))
    np.testing.assert_allclose(out[inner], same_width[inner], atol=2e-4)
    assert not np.allclose(out[inner], guided_average(noisy, guide, sigma, rician=False, strength=0.7)[inner],
                           atol=2e-4)
    # steep: the width stops at strength_max
    steep = guide * 20.0
    noisy = steep + rng.normal(0, sigma, guide.shape).astype(np.float32)
    np.testing.assert_allclose(
        guided_average(noisy, steep, sigma, rician=False, strength=0.7, **sloped)[inner],
        guided_average(noisy, steep, sigma, rician=False, strength=1.4)[inner], rtol=1e-5, atol=1e-6,
    )


def test_local_means_term_matches_a_direct_sum_at_one_voxel() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(6)
    guide = rng.uniform(0, 1, (11, 10, 9)).astype(np.float32)
    noisy = guide + rng.normal(0, 0.2, guide.shape).astype(np.float32)
    out = guided_average(noisy, guide, 0.2, rician=False, radius=1.5, strength=1.0, data_smoothing=0.75, data_width=2.0)
    means = ndimage.gaussian_filter(noisy, 0.75, mode="nearest", truncate=4.0)
    s_m = 0.2 * refine.smoothed_noise_factor(0.75)
    c = (5, 4, 4)
    block = (slice(4, 7), slice(3, 6), slice(3, 6))
    in_ball = ((np.indices((3, 3, 3)) - 1.0) ** 2).sum(axis=0) <= 1.5**2  # the 3x3x3 block less its 8 corners
    w = np.exp(-((guide[block] - guide[c]) ** 2) / 0.2**2 - (means[block] - means[c]) ** 2 / (2 * (2.0 * s_m) ** 2))
    w = w * in_ball
    assert out[c] == pytest.approx(float((w * noisy[block]).sum() / w.sum()), rel=1e-4)


def test_smoothed_noise_factor_is_the_std_of_filtered_white_noise() -> None:
    from scipy import ndimage

    noise = np.random.default_rng(7).normal(0, 1, (64, 64, 64)).astype(np.float32)
    for s in (0.75, 1.5):
        measured = float(ndimage.gaussian_filter(noise, s, mode="nearest", truncate=4.0)[8:-8, 8:-8, 8:-8].std())
        assert refine.smoothed_noise_factor(s) == pytest.approx(measured, rel=0.03)


def test_local_means_keep_texture_that_the_guide_lost() -> None:
    # a texture of 2 sigma amplitude, period 8 voxels, that the guide (a flat estimate) has lost
    sigma = 0.05
    x = np.arange(40, dtype=np.float32)
    clean = np.broadcast_to(0.5 + 0.1 * np.sin(2 * np.pi * x / 8)[:, None, None], (40, 40, 40)).astype(np.float32)
    noisy = clean + np.random.default_rng(8).normal(0, sigma, clean.shape).astype(np.float32)
    guide = np.full_like(clean, 0.5)
    inner = (slice(4, -4),) * 3

    def rms(out: np.ndarray) -> float:
        return float(np.sqrt(np.mean((out - clean)[inner] ** 2)))

    guide_only = rms(guided_average(noisy, guide, sigma, rician=False, data_smoothing=0))
    with_means = rms(guided_average(noisy, guide, sigma, rician=False, data_smoothing=0.75, data_width=2.0))
    # the ball of 3.7 voxels averages most of this sinusoid away: 0.043 RMS error without the second term, 0.012 with
    assert guide_only > 0.03
    assert with_means < 0.6 * guide_only, (guide_only, with_means)


def test_radius_zero_returns_the_guide_and_shapes_must_match() -> None:
    guide = np.ones((8, 8, 8), np.float32)
    np.testing.assert_array_equal(guided_average(guide * 2, guide, 0.1, rician=True, radius=0), guide)
    with pytest.raises(ValueError):
        guided_average(guide[:4], guide, 0.1, rician=True)


def test_default_radius_and_bad_values_are_refused() -> None:
    assert DenoiseOptions().resolved("MR").guided_radius == 3.7
    assert DenoiseOptions().resolved("CT").guided_radius == 3.0
    assert DenoiseOptions(guided_radius=0).resolved("MR").guided_radius == 0
    assert DenoiseOptions(guided_radius=2.5).resolved("CT").guided_radius == 2.5
    for bad in (-1, 0.5, 6):
        with pytest.raises(MedidiffError, match="--guided-radius"):
            DenoiseOptions(guided_radius=bad).resolved("MR")


def test_bundled_mr_model_gains_from_guided_averaging_on_a_phantom() -> None:
    from medidiff import metrics
    from medidiff.inference import Denoiser
    from medidiff.phantom import head_phantom, phantom_affine
    from medidiff.volume import Volume

    clean = head_phantom((64, 72, 64), seed=5)
    clean = clean / np.percentile(clean, 99.9)
    noisy = add_rician_numpy(clean, 0.05, np.random.default_rng(5)).astype(np.float32)
    mask = metrics.foreground_mask(clean, "MR")
    vol = Volume.from_array(noisy, phantom_affine(clean.shape), modality="MR")
    den = Denoiser(model="mr", device="cpu")
    scores = {
        r: metrics.psnr(clean, den.denoise_volume(vol, guided_radius=r).volume.data[0], mask, data_range=1.0)
        for r in (0, None)  # the network alone, the default
    }
    # measured 3.8-4.3 dB on larger phantoms (docs/design.md); 1 dB leaves room for other draws
    assert scores[None] > scores[0] + 1.0, scores


@pytest.mark.parametrize("rician", [True, False])
def test_batch_version_matches_the_volume_version_and_passes_gradients(rician: bool) -> None:
    import torch

    rng = np.random.default_rng(3)
    clean = np.zeros((2, 18, 20, 16), np.float32)
    clean[:, 4:14, 5:15, 3:11] = 0.7
    clean += 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
    sigmas = np.array([0.03, 0.08], np.float32)
    noisy = np.stack([add_rician_numpy(c, s, rng) for c, s in zip(clean, sigmas, strict=True)]).astype(np.float32)
    guide = clean + 0.01 * rng.standard_normal(clean.shape).astype(np.float32)
    for radius in (3.0, refine.RADIUS):
        g = torch.from_numpy(guide)[:, None].requires_grad_(True)
        out = refine.guided_average_batch(torch.from_numpy(noisy)[:, None], g, torch.from_numpy(sigmas),
                                          rician=rician, radius=radius)
        for b in range(2):
            expected = guided_average(noisy[b], guide[b], float(sigmas[b]), rician=rician, radius=radius)
            np.testing.assert_allclose(out[b, 0].detach().numpy(), expected, atol=2e-5)
        out.square().sum().backward()
        assert g.grad is not None and torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


@pytest.mark.parametrize("rician", [True, False])
def test_batch_gradient_matches_finite_differences(rician: bool) -> None:
    import torch

    torch.manual_seed(0)
    noisy = torch.rand(2, 1, 5, 4, 5, dtype=torch.float64) + 0.2
    guide = (noisy + 0.05 * torch.randn_like(noisy)).requires_grad_(True)
    sigma = torch.tensor([0.05, 0.1], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda g: refine.guided_average_batch(noisy, g, sigma, rician=rician, radius=1.5), (guide,)
    )


def test_torch_gaussian_smoothing_matches_scipy() -> None:
    from scipy import ndimage

    x = np.random.default_rng(3).normal(size=(2, 1, 17, 12, 9)).astype(np.float32)
    out = refine.gaussian_smooth(torch.from_numpy(x), 1.5).numpy()
    for b in range(2):
        ref = ndimage.gaussian_filter(x[b, 0], 1.5, mode="nearest", truncate=refine.TRUNCATE)
        np.testing.assert_allclose(out[b, 0], ref, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rician", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.15])
def test_gpu_guided_average_matches_the_cpu(rician: bool, slope: float) -> None:
    rng = np.random.default_rng(4)
    clean = rng.uniform(0.2, 1.0, (150, 20, 24)).astype(np.float32)  # more planes than one GPU slab
    noisy = add_rician_numpy(clean, 0.05, rng) if rician else clean + rng.normal(0, 0.05, clean.shape)
    noisy = noisy.astype(np.float32)
    rule = {"strength": 0.7, "strength_slope": slope, "strength_max": 1.4} if slope else {}
    cpu = guided_average(noisy, clean, 0.05, rician=rician, **rule)
    gpu = guided_average(noisy, clean, 0.05, rician=rician, device="cuda", **rule)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def test_the_cpu_path_is_used_when_the_device_is_out_of_memory(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    clean = rng.uniform(0.2, 1.0, (12, 12, 12)).astype(np.float32)
    noisy = (clean + rng.normal(0, 0.05, clean.shape)).astype(np.float32)
    real = refine._guided_average
    devices = []

    def fake(*args):  # type: ignore[no-untyped-def]
        devices.append(args[-1].type)
        if args[-1].type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(*args)

    monkeypatch.setattr(refine, "_guided_average", fake)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out = guided_average(noisy, clean, 0.05, rician=False, device="cuda")
    assert devices == ["cuda", "cpu"]
    np.testing.assert_array_equal(out, real(noisy, clean, 0.05, False, refine.RADIUS, refine.STRENGTH,
                                            refine.DATA_SMOOTHING, refine.DATA_WIDTH, None, 0.0, None,
                                            torch.device("cpu")))


def _scipy_shrink(x: np.ndarray, sigma: float, floor: float, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The detail step written out with SciPy, as docs/design.md states it (``scale``: relative voxel sizes)."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(x, [refine.DETAIL_SMOOTHING / q for q in scale], mode="nearest")
    detail = x - smooth
    power = ndimage.gaussian_filter(detail**2, [refine.DETAIL_WINDOW / q for q in scale], mode="nearest")
    gain = np.clip((power - (floor * sigma) ** 2) / np.maximum(power, 1e-30), 0.0, 1.0)
    return smooth + gain * detail


def test_faint_detail_in_flat_tissue_is_smoothed_and_strong_detail_kept() -> None:
    rng = np.random.default_rng(3)
    clean = np.full((32, 32, 48), 0.5, np.float32)
    clean[:, :, 32:] = 0.8  # an edge 6 sigma high
    clean[8:24, 8:24, 4] += 0.2  # a thin bright sheet
    left = rng.normal(0, 0.003, clean.shape).astype(np.float32)  # left-over noise, 0.06 sigma
    x = clean + left
    out = refine.shrink_faint_detail(x, 0.05, 0.1)
    flat = (slice(2, -2), slice(2, -2), slice(14, 22))  # 10 voxels from the sheet and the edge
    # all that is left there is the Gaussian of 0.7 voxels: a quarter of the noise or less
    assert float(np.std(out[flat])) < 0.35 * float(np.std(x[flat]))
    # where the detail is far above the floor the output keeps it
    assert float(np.max(np.abs(out[:, :, 30:34] - x[:, :, 30:34]))) < 0.01
    assert float(np.mean(out[8:24, 8:24, 4])) == pytest.approx(0.7, abs=0.01)
    np.testing.assert_allclose(out, _scipy_shrink(x, 0.05, 0.1), rtol=1e-5, atol=1e-6)


def test_detail_floor_zero_returns_the_input() -> None:
    x = np.random.default_rng(4).random((10, 12, 14)).astype(np.float32)
    np.testing.assert_array_equal(refine.shrink_faint_detail(x, 0.05, 0.0), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_detail_shrink_on_the_gpu_matches_the_cpu() -> None:
    x = np.random.default_rng(5).random((40, 40, 40)).astype(np.float32)
    cpu = refine.shrink_faint_detail(x, 0.1, 0.5)
    np.testing.assert_allclose(refine.shrink_faint_detail(x, 0.1, 0.5, device="cuda"), cpu, atol=1e-5)


# --- round in millimetres: the voxel spacing shapes the ball and the Gaussians ---


def test_voxel_scale_is_relative_to_the_finest_axis_and_falls_back_to_isotropic() -> None:
    assert refine.voxel_scale((1.0, 1.0, 3.0)) == (1.0, 1.0, 3.0)
    assert refine.voxel_scale((0.5, 1.5, 0.5)) == (1.0, 3.0, 1.0)
    for bad in (None, (0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (-1.0, 1.0, 1.0), (1.0, 1.0)):
        assert refine.voxel_scale(bad) == (1.0, 1.0, 1.0)


def test_the_neighbourhood_is_a_ball_in_millimetres() -> None:
    assert refine.neighbourhood(3.7, (2.0, 2.0, 2.0)) == refine.neighbourhood(3.7)  # isotropic: unchanged
    thick = refine.neighbourhood(3.7, (1.0, 1.0, 3.0))
    assert {k for _, _, k in thick} == {-1, 0, 1}  # 3 mm slices: one up and one down, not three
    in_plane = sum(1 for i, j in np.ndindex(9, 9) if (i - 4) ** 2 + (j - 4) ** 2 <= 3.7**2)  # 43
    next_slice = sum(1 for i, j in np.ndindex(9, 9) if (i - 4) ** 2 + (j - 4) ** 2 <= 3.7**2 - 9)  # 14
    assert len(thick) == in_plane + 2 * next_slice == 71
    assert {i for i, _, _ in refine.neighbourhood(3.7, (3.0, 1.0, 1.0))} == {-1, 0, 1}  # the coarse axis is found


def test_gaussians_take_a_std_per_axis_from_the_spacing() -> None:
    from scipy import ndimage

    x = np.random.default_rng(8).normal(size=(17, 12, 15)).astype(np.float32)
    ref = ndimage.gaussian_filter(x, [0.75, 0.75, 0.25], mode="nearest", truncate=refine.TRUNCATE)
    np.testing.assert_allclose(refine.smooth_volume(torch.from_numpy(x), 0.75, (1.0, 1.0, 3.0)).numpy(), ref,
                               atol=1e-6)
    torch_out = refine.gaussian_smooth(torch.from_numpy(x)[None, None], 0.75, (0.8, 0.8, 2.4))[0, 0].numpy()
    np.testing.assert_allclose(torch_out, ref, atol=1e-5)


def test_smoothed_noise_factor_follows_the_spacing() -> None:
    from scipy import ndimage

    noise = np.random.default_rng(9).normal(0, 1, (64, 64, 64)).astype(np.float32)
    measured = float(ndimage.gaussian_filter(noise, [0.75, 0.75, 0.25], mode="nearest", truncate=4.0)[8:-8, 8:-8,
                                                                                                     8:-8].std())
    assert refine.smoothed_noise_factor(0.75, (1.0, 1.0, 3.0)) == pytest.approx(measured, rel=0.03)
    assert refine.smoothed_noise_factor(0.75, (1.0, 1.0, 3.0)) > 1.5 * refine.smoothed_noise_factor(0.75)
    assert refine.smoothed_noise_factor(0.75, (3.0, 3.0, 3.0)) == pytest.approx(refine.smoothed_noise_factor(0.75))


def test_guided_average_over_thick_slices_averages_the_ball_in_millimetres() -> None:
    rng = np.random.default_rng(10)
    clean = np.full((30, 30, 30), 0.5, np.float32)
    noisy = clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)
    out = guided_average(noisy, clean, 0.05, rician=False, radius=3.7, data_smoothing=0, spacing=(1.0, 1.0, 3.0))
    inner = (slice(4, -4),) * 3
    # the 71 voxels within 3.7 mm at 1 x 1 x 3 mm, all equally weighted in flat tissue
    assert float(np.std(out[inner])) == pytest.approx(0.05 / np.sqrt(71), rel=0.1)
    same = guided_average(noisy, clean, 0.05, rician=True, spacing=(1.5, 1.5, 1.5))
    np.testing.assert_array_equal(same, guided_average(noisy, clean, 0.05, rician=True))


def test_detail_step_with_spacing_matches_the_scipy_formula() -> None:
    x = np.random.default_rng(11).random((20, 22, 12)).astype(np.float32)
    out = refine.shrink_faint_detail(x, 0.1, 0.5, spacing=(0.9, 0.9, 2.7))
    np.testing.assert_allclose(out, _scipy_shrink(x, 0.1, 0.5, (1.0, 1.0, 3.0)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, refine.shrink_faint_detail(x, 0.1, 0.5), atol=1e-4)
