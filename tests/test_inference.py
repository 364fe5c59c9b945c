"""Whole-volume denoising with a tiny trained model: shapes, geometry, options, odd inputs, API kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_phantom

import medidiff.inference
from medidiff.errors import MedidiffError, ModelError
from medidiff.inference import GUIDED_WEIGHTS, DenoiseOptions, Denoiser, denoise
from medidiff.volume import Volume


def _volume(shape=(24, 28, 24), channels: int = 1, seed: int = 0) -> Volume:
    from medidiff.noise import add_rician_numpy
    from medidiff.phantom import head_phantom

    rng = np.random.default_rng(seed)
    vols = [add_rician_numpy(head_phantom(shape, seed=seed + c), 0.05, rng) for c in range(channels)]
    affine = np.array([[-1.5, 0.1, 0, 10], [0.1, 1.5, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    arr = vols[0] if channels == 1 else np.stack(vols, axis=-1)
    return Volume.from_array(arr, affine, modality="MR")


@pytest.fixture(scope="module")
def den(tiny_model) -> Denoiser:
    return Denoiser(model=str(tiny_model), device="cpu")


def test_output_keeps_shape_geometry_and_reports_what_it_did(den: Denoiser) -> None:
    vol = _volume()
    result = den.denoise_volume(vol)
    assert result.volume.data.shape == vol.data.shape
    assert np.array_equal(result.volume.meta.affine, vol.meta.affine)
    assert np.isfinite(result.volume.data).all()
    assert result.uncertainty is None
    assert result.info["steps"] == 1 and result.info["sampler"] == "euler"
    assert 0.01 < result.sigma < 0.2
    assert len(result.info["model_sha256"]) == 64


def test_given_sigma_is_used(den: Denoiser) -> None:
    result = den.denoise_volume(_volume(), sigma=0.07)
    assert result.sigma == pytest.approx(0.07, rel=1e-6)


def test_deterministic_sampler_is_reproducible_and_seeded_sampler_varies(den: Denoiser) -> None:
    vol = _volume()
    a = den.denoise_volume(vol, steps=3).volume.data
    b = den.denoise_volume(vol, steps=3).volume.data
    assert np.array_equal(a, b)
    s1 = den.denoise_volume(vol, sampler="ancestral", steps=3, seed=1).volume.data
    s2 = den.denoise_volume(vol, sampler="ancestral", steps=3, seed=2).volume.data
    assert not np.array_equal(s1, s2)


def test_samples_give_mean_and_uncertainty(den: Denoiser) -> None:
    vol = _volume()
    result = den.denoise_volume(vol, samples=3)
    assert result.info["sampler"] == "ancestral"
    assert result.uncertainty is not None
    assert result.uncertainty.data.shape == vol.data.shape
    assert float(result.uncertainty.data.max()) > 0
    assert float(result.uncertainty.data.min()) >= 0


def test_flips_average_the_denoised_mirror_images(den: Denoiser) -> None:
    from medidiff.inference import MIRRORS

    vol = _volume()
    axes = MIRRORS[1]
    net = dict(sigma=0.05, guided_radius=0)  # the network's estimates, before the guided averaging
    plain = den.denoise_volume(vol, **net).volume.data[0]
    mirrored_in = vol.with_data(np.ascontiguousarray(np.flip(vol.data, [a + 1 for a in axes])))
    mirrored = np.flip(den.denoise_volume(mirrored_in, **net).volume.data[0], axes)
    result = den.denoise_volume(vol, flips=2, **net)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the mirror image is a different estimate
    np.testing.assert_allclose(result.volume.data[0], (plain + mirrored) / 2, atol=1e-5)
    assert result.info["flips"] == 2 and result.uncertainty is not None
    np.testing.assert_allclose(result.uncertainty.data[0], np.abs(plain - mirrored) / 2, atol=1e-5)


def test_all_eight_mirror_images_are_flipped_back_on_their_own_axes(den: Denoiser) -> None:
    from medidiff.inference import MIRRORS

    vol = _volume(shape=(24, 28, 20))  # three different lengths: a mixed-up axis cannot flip back
    runs = []
    for axes in MIRRORS:
        mirrored = vol.with_data(np.ascontiguousarray(np.flip(vol.data, [a + 1 for a in axes])))
        runs.append(np.flip(den.denoise_volume(mirrored, sigma=0.05, guided_radius=0).volume.data[0], axes))
    result = den.denoise_volume(vol, sigma=0.05, flips=8, guided_radius=0)
    np.testing.assert_allclose(result.volume.data[0], np.mean(runs, axis=0), atol=1e-5)
    np.testing.assert_allclose(result.uncertainty.data[0], np.std(runs, axis=0), atol=1e-5)


def test_mr_default_is_the_guided_average_of_the_scan_around_the_network_estimate(den: Denoiser) -> None:
    from medidiff.refine import guided_average, shrink_faint_detail

    vol = _volume()
    net = den.denoise_volume(vol, sigma=0.05, guided_radius=0)
    result = den.denoise_volume(vol, sigma=0.05)
    assert result.info["guided_radius"] == 3.7 and net.info["guided_radius"] == 0
    assert result.info["detail_floor"] == 0.05 and net.info["detail_floor"] == 0.0  # none without averaging
    assert result.info["box"] == [[0, n] for n in vol.spatial_shape]  # the whole volume went through
    # both steps are round in millimetres: this volume's voxels are 1.5 x 1.5 x 2 mm
    assert vol.meta.spacing[2] == 2.0 and vol.meta.spacing[0] == pytest.approx(1.5033, abs=1e-4)
    rule = GUIDED_WEIGHTS["MR"].kwargs()
    # the range kernel widens on the estimate's slopes; the local means' kernel is 3 times their noise
    assert rule == {"strength": 0.7, "strength_slope": 0.15, "strength_max": 1.4, "data_width": 3.0}
    averaged = guided_average(vol.data[0], net.volume.data[0], 0.05, rician=True, radius=3.7,
                              spacing=vol.meta.spacing, **rule)
    expected = shrink_faint_detail(averaged, 0.05, 0.05, spacing=vol.meta.spacing)
    np.testing.assert_allclose(result.volume.data[0], expected, rtol=1e-4, atol=1e-5)
    isotropic = shrink_faint_detail(
        guided_average(vol.data[0], net.volume.data[0], 0.05, rician=True, radius=3.7, **rule), 0.05, 0.05
    )
    assert not np.allclose(result.volume.data[0], isotropic, atol=1e-4)  # the spacing made a difference
    assert not np.allclose(expected, averaged, atol=1e-4)  # the detail step did something here
    assert not np.allclose(result.volume.data[0], net.volume.data[0], atol=1e-3)
    plain = den.denoise_volume(vol, sigma=0.05, detail_floor=0)
    np.testing.assert_allclose(plain.volume.data[0], averaged, rtol=1e-4, atol=1e-5)
    one_width = guided_average(vol.data[0], net.volume.data[0], 0.05, rician=True, radius=3.7,
                               spacing=vol.meta.spacing)
    assert not np.allclose(averaged, one_width, atol=1e-4)  # the MR weights made a difference


def test_detail_floor_defaults_by_modality_and_follows_guided_averaging() -> None:
    assert DenoiseOptions().resolved("MR").detail_floor == 0.05
    assert DenoiseOptions().resolved("CT").detail_floor == 0.0
    assert DenoiseOptions(guided_radius=0).resolved("MR").detail_floor == 0.0
    assert DenoiseOptions(detail_floor=0.1).resolved("CT").detail_floor == 0.1
    assert DenoiseOptions(guided_radius=0, detail_floor=0.1).resolved("MR").detail_floor == 0.1


def test_ct_default_is_one_step_blending_15_percent_of_the_input_back(den: Denoiser) -> None:
    vol = _volume()
    ct = Volume.from_array(vol.data[0] * 2000.0 - 1000.0, vol.meta.affine, modality="CT")
    net = den.denoise_volume(ct, blend=0.0, sigma=40.0)  # at 40 HU the network runs (no window skipped)
    result = den.denoise_volume(ct, sigma=40.0)
    assert result.info["blend"] == 0.15 and result.info["guided_radius"] == 3.0 and result.info["steps"] == 1
    assert result.info["skipped_windows"] == 0
    np.testing.assert_allclose(result.volume.data, 0.85 * net.volume.data + 0.15 * ct.data, rtol=1e-5, atol=1e-2)
    assert den.denoise_volume(vol).info["blend"] == 0.0  # MR: none


def test_network_is_told_the_scaled_sigma_and_the_steps_after_it_the_estimate(den: Denoiser) -> None:
    from medidiff.refine import guided_average

    vol = _volume()
    assert DenoiseOptions().resolved("MR").network_sigma_scale == 1.1
    assert DenoiseOptions().resolved("CT").network_sigma_scale == 1.0
    assert DenoiseOptions(network_sigma_scale=1.3).resolved("CT").network_sigma_scale == 1.3

    scaled = den.denoise_volume(vol, sigma=0.05, guided_radius=0)  # the MR default, 1.1
    told = den.denoise_volume(vol, sigma=0.055, guided_radius=0, network_sigma_scale=1.0)
    plain = den.denoise_volume(vol, sigma=0.05, guided_radius=0, network_sigma_scale=1.0)
    assert scaled.info["network_sigma_scale"] == 1.1 and scaled.sigma == pytest.approx(0.05, rel=1e-6)
    np.testing.assert_allclose(scaled.volume.data, told.volume.data, rtol=1e-5, atol=1e-6)
    assert not np.allclose(scaled.volume.data, plain.volume.data, atol=1e-4)
    # guided averaging works at the estimate, not at the network's scaled level
    result = den.denoise_volume(vol, sigma=0.05, detail_floor=0)
    expected = guided_average(vol.data[0], scaled.volume.data[0], 0.05, rician=True, radius=3.7,
                              spacing=vol.meta.spacing, **GUIDED_WEIGHTS["MR"].kwargs())
    np.testing.assert_allclose(result.volume.data[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("spacing", "ct_scale"),
    [((1.5, 1.5, 1.5), 1.0), ((0.9, 0.9, 3.0), 1.0), ((0.825, 0.825, 1.0), 1.1), ((0.75, 0.75, 1.5), 1.2),
     ((0.45, 0.45, 5.0), 1.2), ((3.0, 0.7, 0.8), 1.2)],
)  # fmt: skip
def test_the_ct_network_sigma_scale_rises_on_fine_pixels_only(spacing, ct_scale) -> None:
    assert DenoiseOptions().resolved("CT", spacing).network_sigma_scale == pytest.approx(ct_scale)
    assert DenoiseOptions().resolved("MR", spacing).network_sigma_scale == 1.1
    assert DenoiseOptions(network_sigma_scale=1.0).resolved("CT", spacing).network_sigma_scale == 1.0



def test_denoise_takes_the_ct_scale_from_the_scan_s_pixels(den: Denoiser) -> None:
    hu = _volume().data[0] * 2000.0 - 1000.0
    fine = den.denoise_volume(Volume.from_array(hu, np.diag([0.7, 0.7, 1.5, 1.0]), modality="CT"), sigma=40.0)
    coarse = den.denoise_volume(Volume.from_array(hu, np.diag([1.5, 1.5, 1.5, 1.0]), modality="CT"), sigma=40.0)
    assert fine.info["network_sigma_scale"] == pytest.approx(1.2)
    assert coarse.info["network_sigma_scale"] == 1.0

def test_blend_scales_the_uncertainty_with_the_denoised_share(den: Denoiser) -> None:
    vol = _volume()
    full = den.denoise_volume(vol, sigma=0.05, flips=2, guided_radius=0, blend=0.0)
    half = den.denoise_volume(vol, sigma=0.05, flips=2, guided_radius=0, blend=0.5)
    np.testing.assert_allclose(half.volume.data, 0.5 * full.volume.data + 0.5 * vol.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(half.uncertainty.data, 0.5 * full.uncertainty.data, rtol=1e-5, atol=1e-7)


def test_running_moments_match_numpy() -> None:
    from medidiff.inference import _RunningMoments

    runs = np.random.default_rng(0).normal(3.0, 2.0, size=(5, 6, 7, 8)).astype(np.float32)
    moments = _RunningMoments()
    moments.add(runs[0])
    assert np.array_equal(moments.mean, runs[0]) and not moments.std.any()
    for run in runs[1:]:
        moments.add(run)
    np.testing.assert_allclose(moments.mean, runs.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(moments.std, runs.std(axis=0), atol=1e-5)


def test_strength_renoises_further(den: Denoiser) -> None:
    vol = _volume()
    plain = den.denoise_volume(vol).volume.data
    strong = den.denoise_volume(vol, strength=1.0, seed=0).volume.data
    assert not np.array_equal(plain, strong)


def test_4d_every_volume_denoised(den: Denoiser) -> None:
    vol = _volume(channels=3)
    result = den.denoise_volume(vol)
    assert result.volume.data.shape == (3, 24, 28, 24)
    assert isinstance(result.info["sigma"], list) and len(result.info["sigma"]) == 3
    single = den.denoise_volume(vol.with_data(vol.data[1:2])).volume.data[0]
    np.testing.assert_allclose(result.volume.data[1], single, atol=1e-5)


def test_nan_voxels_stay_nan_and_the_rest_is_finite(den: Denoiser) -> None:
    vol = _volume()
    data = vol.data.copy()
    data[0, 3:6, 4:7, 5:8] = np.nan
    result = den.denoise_volume(vol.with_data(data))
    out = result.volume.data
    assert np.isnan(out[0, 3:6, 4:7, 5:8]).all()
    assert np.isfinite(out[~np.isnan(data)]).all()


def test_constant_volume_is_returned_unchanged(den: Denoiser) -> None:
    vol = _volume()
    result = den.denoise_volume(vol.with_data(np.full(vol.data.shape, 7.0, np.float32)))
    assert np.array_equal(result.volume.data, np.full(vol.data.shape, 7.0, np.float32))
    assert "constant" in result.info["notes"][0]


def test_all_nan_volume_is_refused(den: Denoiser) -> None:
    vol = _volume()
    with pytest.raises(MedidiffError, match="finite"):
        den.denoise_volume(vol.with_data(np.full(vol.data.shape, np.nan, np.float32)))


def test_2d_image_is_refused(den: Denoiser) -> None:
    vol = Volume.from_array(np.random.default_rng(0).random((32, 32, 1)).astype(np.float32))
    with pytest.raises(MedidiffError, match="3D"):
        den.denoise_volume(vol)


def test_volume_smaller_than_the_window_is_padded(den: Denoiser) -> None:
    vol = _volume(shape=(10, 12, 9))
    out = den.denoise_volume(vol, roi_size=(32, 32, 32)).volume.data
    assert out.shape == vol.data.shape and np.isfinite(out).all()


def test_only_the_box_around_the_signal_is_tiled(den: Denoiser) -> None:
    vol = _volume(shape=(24, 28, 24))
    padded = np.zeros((1, 72, 28, 24), np.float32)
    padded[:, :24] = vol.data
    result = den.denoise_volume(Volume.from_array(padded[0], modality="MR"), roi_size=(24, 24, 24), overlap=0.0)
    start, stop = result.info["box"][0]
    assert start == 0 and 24 <= stop <= 24 + 8 + 2  # the signal plus the margin (and the 5-voxel box filter)
    assert np.all(result.volume.data[0, stop:] == 0)
    assert result.info["windows"] == 4  # 2 x 2 x 1 windows of 24 over the box (32 x 28 x 24)


def test_windows_without_signal_are_skipped(den: Denoiser) -> None:
    vol = _volume(shape=(24, 28, 24))
    padded = np.zeros((1, 120, 28, 24), np.float32)
    padded[:, :24] = vol.data
    padded[:, 96:] = vol.data
    result = den.denoise_volume(Volume.from_array(padded[0], modality="MR"), roi_size=(24, 24, 24), overlap=0.0)
    assert result.info["box"][0] == [0, 120]
    assert result.info["skipped_windows"] >= 1
    assert np.all(result.volume.data[0, 48:72] == 0)


def test_a_sliver_of_signal_at_a_window_edge_is_denoised_not_blanked(den: Denoiser) -> None:
    # a rod of tissue whose last 3 slices (48 voxels, 0.3 % of the window) reach into the second window
    from medidiff.noise import add_rician_numpy

    clean = np.zeros((48, 24, 24), np.float32)
    clean[:27, 10:14, 10:14] = 0.8
    noisy = add_rician_numpy(clean, 0.05, np.random.default_rng(0))
    result = den.denoise_volume(Volume.from_array(noisy, modality="MR"), roi_size=(24, 24, 24), overlap=0.0)
    out = result.volume.data[0]
    assert result.info["skipped_windows"] == 0
    assert out[24:27, 10:14, 10:14].mean() > 0.4


def test_batching_windows_gives_the_same_output_and_is_reported(den: Denoiser) -> None:
    vol = _volume(shape=(40, 44, 40))
    one = den.denoise_volume(vol, roi_size=(24, 24, 24), precision="fp32", batch_size=1)
    many = den.denoise_volume(vol, roi_size=(24, 24, 24), precision="fp32")
    assert one.info["batch_size"] == 1 and many.info["batch_size"] == 2  # two at a time in fp32 on the CPU
    assert one.info["windows"] == many.info["windows"] > 5
    np.testing.assert_allclose(many.volume.data, one.volume.data, atol=1e-5)


def test_windows_per_call_default_by_device_and_precision() -> None:
    from medidiff.inference import CPU_FP32_BATCH_SIZE, GPU_BATCH_SIZE, windows_per_call

    cpu = torch.device("cpu")
    assert windows_per_call(None, cpu, "fp32") == CPU_FP32_BATCH_SIZE == 2
    assert windows_per_call(None, cpu, "bf16") == 1
    assert windows_per_call(None, torch.device("cuda"), "bf16") == GPU_BATCH_SIZE > 1
    assert windows_per_call(3, torch.device("cuda")) == windows_per_call(3, cpu, "bf16") == 3


def test_windows_are_fitted_for_the_least_work_near_the_base_size() -> None:
    from medidiff.inference import WINDOW_GROWTH, fit_windows

    base, margin, factor = 40, 8, 8
    # the Colin27 box: 4 windows of 48 instead of 5 of 40 on the short axes, 4 of 56 on the long one
    assert fit_windows((163, 198, 165), (base,) * 3, 0.2, factor) == (48, 56, 48)
    for size in range(9, 400):
        r = fit_windows((size, size, size), (base,) * 3, 0.2, factor)[0]
        first = -(-size // base)  # the window count tried first
        first_r = max(factor, -(-round((size + (first - 1) * margin) / first) // factor) * factor)
        n = next(k for k in range(1, first + 1) if k * r >= size + (k - 1) * (margin - 1))  # about the overlap
        assert r % factor == 0
        assert r == first_r or r <= base + WINDOW_GROWTH
        assert n * r <= first * first_r  # never more work than the first count


def test_content_mask_ignores_isolated_noise_and_keeps_a_margin() -> None:
    from medidiff.inference import content_box, content_mask

    rng = np.random.default_rng(0)
    y = rng.rayleigh(0.05, (64, 64, 64)).astype(np.float32)
    y[rng.random(y.shape) < 1e-4] = 1.0  # scattered single bright voxels
    assert not content_mask(y, 0.25).any()
    y[30:34, 30:34, 30:34] = 1.0
    mask = content_mask(y, 0.25, margin=8)
    assert mask[30:34, 30:34, 30:34].all() and mask[21, 31, 31] and not mask[20, 31, 31]
    assert content_box(mask) == (slice(21, 43),) * 3  # the box filter reaches 1 voxel out, then 8 of margin


@pytest.mark.parametrize(
    "bad",
    [dict(steps=0), dict(samples=0), dict(sampler="ddpm"), dict(overlap=1.5), dict(strength=-1.0),
     dict(sigma=-0.1), dict(roi_size=(4, 4, 4)), dict(samples=3, sampler="euler"), dict(precision="fp16"),
     dict(flips=0), dict(flips=9), dict(guided_radius=-1), dict(guided_radius=0.5), dict(guided_radius=6),
     dict(blend=-0.1), dict(blend=1.5), dict(network_sigma_scale=0.4), dict(network_sigma_scale=2.5),
     dict(network_sigma_scale=float("nan")), dict(detail_floor=-0.1), dict(detail_floor=1.5),
     dict(detail_floor=float("nan")), dict(detail_floor=float("inf"))],
)
def test_bad_options_name_themselves(bad: dict) -> None:
    with pytest.raises(MedidiffError):
        DenoiseOptions(**bad).resolved()


def test_default_steps_follow_the_modality(den: Denoiser, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DenoiseOptions().resolved().steps == 1
    assert DenoiseOptions().resolved("MR").steps == 1
    assert DenoiseOptions().resolved("CT").steps == 1
    assert DenoiseOptions(steps=3).resolved("CT").steps == 3
    assert DenoiseOptions(sampler="ancestral").resolved("CT").steps == 4
    vol = _volume()
    ct = Volume.from_array(vol.data[0] * 2000.0 - 1000.0, vol.meta.affine, modality="CT")
    three = den.denoise_volume(ct, steps=3, sigma=40.0)  # at 40 HU the network runs (no window skipped)
    one = den.denoise_volume(ct, sigma=40.0)
    assert three.info["steps"] == 3 and one.info["steps"] == 1 and one.info["skipped_windows"] == 0
    assert not np.allclose(three.volume.data, one.volume.data, atol=0.01)
    monkeypatch.setitem(medidiff.inference.DEFAULT_STEPS, "CT", 3)  # the table is per modality
    assert den.denoise_volume(ct).info["steps"] == 3
    assert den.denoise_volume(vol).info["steps"] == 1


def test_bf16_agrees_with_fp32_and_is_reported(den: Denoiser) -> None:
    vol = _volume()
    full = den.denoise_volume(vol, precision="fp32", sigma=0.05)
    half = den.denoise_volume(vol, precision="bf16", sigma=0.05)
    assert full.info["precision"] == "fp32" and half.info["precision"] == "bf16"
    diff = np.abs(full.volume.data - half.volume.data)
    assert 0 < diff.max() < 0.01  # bf16 rounds differently, but far below the noise (0.05)
    assert float(np.sqrt(np.mean(diff**2))) < 0.002


def test_auto_precision_follows_the_hardware() -> None:
    from medidiff.inference import cpu_has_native_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_api_returns_the_kind_it_was_given(tiny_model, tmp_path) -> None:
    import nibabel as nib

    arr = _volume().to_array()
    out = denoise(arr, affine=np.eye(4), model=str(tiny_model), device="cpu", modality="MR")
    assert isinstance(out, np.ndarray) and out.shape == arr.shape and out.dtype == arr.dtype
    img = nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]))
    out_img = denoise(img, model=str(tiny_model), device="cpu", modality="MR")
    assert isinstance(out_img, nib.Nifti1Image) and np.array_equal(out_img.affine, img.affine)
    from monai.data import MetaTensor

    mt = MetaTensor(torch.from_numpy(arr[None]), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out_mt = denoise(mt, model=str(tiny_model), device="cpu", modality="MR")
    assert isinstance(out_mt, MetaTensor) and out_mt.shape == mt.shape
    assert torch.equal(torch.as_tensor(out_mt.affine), torch.as_tensor(mt.affine))
    # an integer MetaTensor comes back float32 with the fractions kept, as an integer array does
    as_int = MetaTensor(torch.from_numpy(np.round(arr[None] * 1000).astype(np.int16)), affine=mt.affine)
    out_int = denoise(as_int, model=str(tiny_model), device="cpu", modality="MR")
    from_float = denoise(as_int.float(), model=str(tiny_model), device="cpu", modality="MR")
    assert out_int.dtype == torch.float32
    assert torch.equal(torch.as_tensor(out_int), torch.as_tensor(from_float))
    assert float((torch.as_tensor(out_int) % 1).abs().max()) > 0
    path = write_phantom(tmp_path / "p.nii.gz")
    out_vol = denoise(str(path), model=str(tiny_model), device="cpu")
    assert isinstance(out_vol, Volume)
    with pytest.raises(MedidiffError, match="cannot denoise"):
        denoise([1, 2, 3], model=str(tiny_model), device="cpu")
    kept = Denoiser(model=str(tiny_model), device="cpu")  # one model loaded for many calls, same results
    np.testing.assert_array_equal(kept.denoise(arr, affine=np.eye(4), modality="MR"), out)
    assert np.array_equal(kept.denoise(str(path)).data, out_vol.data)


def test_run_folder_and_exported_file_agree(tiny_run, tiny_model) -> None:
    vol = _volume()
    a = Denoiser(model=str(tiny_run), device="cpu").denoise_volume(vol).volume.data
    b = Denoiser(model=str(tiny_model), device="cpu").denoise_volume(vol).volume.data
    # the exported file holds fp16 weights: close, not identical
    assert np.abs(a - b).max() < 0.02 * float(np.abs(a).max())


def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(MedidiffError, match="cuda"):
        Denoiser(model=None, device="cuda")


def test_load_keeps_the_model_for_the_calls_after_it(tiny_model) -> None:
    den = Denoiser(model=str(tiny_model), device="cpu")
    assert not den._loaded
    den.load("MR")
    loaded = den._model_for("MR")
    assert den._loaded and den._model_for("CT") is loaded  # one given model serves both modalities
    with pytest.raises(MedidiffError, match="MR or CT"):
        den.load("PET")


def test_missing_model_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        Denoiser(model=str(tmp_path / "nope.safetensors"), device="cpu").denoise_volume(_volume())


def test_api_inputs_of_the_wrong_shape_are_medidiff_errors(tiny_model) -> None:
    from monai.data import MetaTensor

    with pytest.raises(MedidiffError, match="3D"):
        denoise(np.ones((8, 8), np.float32), model=str(tiny_model), device="cpu")
    with pytest.raises(MedidiffError, match="affine must be 4x4"):
        denoise(np.ones((8, 8, 8), np.float32), affine=np.eye(3), model=str(tiny_model), device="cpu")
    with pytest.raises(MedidiffError, match="batch axis"):
        denoise(MetaTensor(torch.ones(2, 1, 8, 8, 8)), model=str(tiny_model), device="cpu")


def test_api_keeps_the_nibabel_image_class_and_takes_the_modality_in_any_case(tiny_model) -> None:
    import nibabel as nib

    arr = _volume().to_array()
    img2 = nib.Nifti2Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]))
    out = denoise(img2, model=str(tiny_model), device="cpu", modality="mr")
    assert type(out) is nib.Nifti2Image and np.array_equal(out.affine, img2.affine)
    upper = denoise(img2, model=str(tiny_model), device="cpu", modality="MR")
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(upper.dataobj))
    with pytest.raises(MedidiffError, match="MR or CT"):
        denoise(arr, model=str(tiny_model), device="cpu", modality="PET")
    Denoiser(model=str(tiny_model), device="cpu").load("mr")  # the same in Denoiser.load


@pytest.mark.parametrize("padding", [-3024.0, -2048.0])
def test_ct_padding_outside_the_field_of_view_comes_back_and_costs_little_inside(padding: float) -> None:
    """Scanners store voxels outside the reconstruction circle as -3024 or -2048 HU."""
    from medidiff.phantom import head_phantom

    shape = (48, 48, 16)
    clean = head_phantom(shape, seed=0) * 1400.0 - 1000.0  # air -1000 HU, tissue up to about 200
    noisy = (clean + np.random.default_rng(0).normal(0.0, 40.0, shape)).astype(np.float32)
    xx, yy = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    outside = np.broadcast_to((((xx - 23.5) ** 2 + (yy - 23.5) ** 2) > 22**2)[..., None], shape)
    padded = noisy.copy()
    padded[outside] = padding
    den = Denoiser(model="ct", device="cpu")
    # the true sigma: this phantom's flat tissue makes the estimate far too high, which would hide the cost
    plain = den.denoise_volume(Volume.from_array(noisy, np.diag([0.8, 0.8, 2.0, 1.0])), modality="CT", sigma=40.0)
    result = den.denoise_volume(Volume.from_array(padded, np.diag([0.8, 0.8, 2.0, 1.0])), modality="CT", sigma=40.0)
    out = result.volume.data[0]
    assert np.array_equal(out[outside], padded[outside])  # put back unchanged
    assert any("padding" in note for note in result.info["notes"])
    inside = ~outside
    error_plain = np.abs(plain.volume.data[0] - clean)[inside].mean()
    error_padded = np.abs(out - clean)[inside].mean()
    # measured 18.3 against 17.4 HU for both paddings (left in the network's input: 21.4 and 19.9)
    assert error_padded < 1.1 * error_plain, (error_padded, error_plain)


def test_ct_padding_is_the_lowest_value_far_below_air_and_held_by_many_voxels() -> None:
    from medidiff.inference import ct_padding

    rng = np.random.default_rng(0)
    air = (-1000.0 + rng.normal(0.0, 60.0, (40, 40, 10))).astype(np.float32)  # noisy air: a few voxels below -1100
    finite = np.isfinite(air)
    assert ct_padding(air, finite) is None  # its lowest value is one voxel, not padding
    padded = air.copy()
    padded[:5] = -3024.0
    found = ct_padding(padded, finite)
    assert found is not None and found.sum() == 5 * 40 * 10
    padded[:5] = -1050.0  # below air but above the threshold: tissue-range data, not padding
    assert ct_padding(padded, finite) is None
    stored = np.full((20, 20, 8), -1000, dtype=np.int16)  # integer arrays, as scanners store them
    stored[:4] = -2048
    found = ct_padding(stored, np.ones(stored.shape, dtype=bool))
    assert found is not None and found.sum() == 4 * 20 * 8
