"""Metrics against independent computations of their documented definitions, masks, geometry checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medidiff import metrics
from medidiff.errors import MedidiffError
from medidiff.volume import Volume


def _phantom(shape: tuple[int, int, int] = (28, 32, 24), seed: int = 0) -> np.ndarray:
    """A smooth 'head': an ellipsoid with inner structure on a zero background, values in [0, 1]."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum((g / r) ** 2 for g, r in zip(grid, (0.8, 0.85, 0.75), strict=True)))
    image = np.where(radius < 1.0, 0.6, 0.0)
    image += np.where(radius < 0.6, 0.3 * np.cos(6 * grid[0]) * np.sin(5 * grid[1]) + 0.2, 0.0)
    rng = np.random.default_rng(seed)
    image += 0.02 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * (radius < 1.0)
    return np.clip(image, 0, None).astype(np.float32)


def _ssim_from_scratch(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 7) -> np.ndarray:
    """SSIM map (Wang et al. 2004) with a uniform win^3 window, sample covariance, reflected borders."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    n = win**3
    mean = lambda a: ndimage.uniform_filter(a, size=win, mode="reflect")  # noqa: E731
    ux, uy = mean(x), mean(y)
    cov = n / (n - 1.0)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


# ---------------------------------------------------------------- PSNR


def test_psnr_matches_definition_and_skimage() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    ref = _phantom()
    test = ref + 0.05 * np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    mask = ref > 0.1
    expected = 10 * math.log10(1.0 / np.mean((ref[mask].astype(np.float64) - test[mask]) ** 2))
    got = metrics.psnr(ref, test, mask, data_range=1.0)
    assert abs(got - expected) < 0.01
    assert abs(got - peak_signal_noise_ratio(ref[mask], test[mask], data_range=1.0)) < 0.01
    # the background is excluded: corrupting it changes nothing
    noisy_background = test.copy()
    noisy_background[~mask] += 5.0
    assert metrics.psnr(ref, noisy_background, mask, data_range=1.0) == pytest.approx(got)


def test_psnr_4d_pools_volumes_and_identical_is_inf() -> None:
    ref = np.stack([_phantom(seed=0), _phantom(seed=1)])
    test = ref + 0.1
    mask = ref[0] > 0.1
    assert metrics.psnr(ref, test, mask, data_range=2.0) == pytest.approx(10 * math.log10(4.0 / 0.01), abs=1e-3)
    assert metrics.psnr(ref, ref, mask, data_range=1.0) == math.inf


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9)),
    seed=st.integers(0, 10_000),
    data_range=st.floats(0.1, 4000.0),
)
def test_psnr_property(shape: tuple[int, int, int], seed: int, data_range: float) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.random(shape).astype(np.float32) * data_range
    test = ref + rng.standard_normal(shape).astype(np.float32) * data_range * 0.1 + 1e-3 * data_range
    mask = rng.random(shape) > 0.3
    mask.flat[0] = True
    mse = np.mean((ref[mask].astype(np.float64) - test[mask].astype(np.float64)) ** 2)
    assert metrics.psnr(ref, test, mask, data_range=data_range) == pytest.approx(
        10 * math.log10(data_range**2 / mse), abs=0.01
    )


def test_bad_data_range_is_a_user_error() -> None:
    ref = _phantom()
    with pytest.raises(MedidiffError, match="data range"):
        metrics.psnr(ref, ref, data_range=0.0)
    with pytest.raises(MedidiffError, match="empty"):
        metrics.psnr(ref, ref, np.zeros(ref.shape, bool), data_range=1.0)


# ---------------------------------------------------------------- SSIM


@pytest.mark.parametrize("data_range", [1.0, 2000.0])
def test_ssim_matches_from_scratch_definition(data_range: float) -> None:
    ref = _phantom() * data_range
    rng = np.random.default_rng(2)
    test = ndimage.gaussian_filter(ref, 0.7) + 0.04 * data_range * rng.standard_normal(ref.shape)
    mask = ref > 0.3 * data_range
    box = _bbox(mask)
    expected = float(_ssim_from_scratch(ref[box], test[box], data_range)[mask[box]].mean())
    got = metrics.ssim(ref, test, mask, data_range=data_range)
    assert abs(got - expected) < 0.002
    assert 0.0 < got < 1.0
    assert metrics.ssim(ref, ref, mask, data_range=data_range) == pytest.approx(1.0)


def test_ssim_whole_volume_equals_skimage_mean_of_full_map() -> None:
    from skimage.metrics import structural_similarity

    ref = _phantom()
    test = ref + 0.05 * np.random.default_rng(3).standard_normal(ref.shape)
    _, full = structural_similarity(ref.astype(np.float64), test, data_range=1.0, full=True)
    assert metrics.ssim(ref, test, None, data_range=1.0) == pytest.approx(float(full.mean()), abs=1e-6)


def test_ssim_ignores_a_flattened_background() -> None:
    ref = _phantom()
    rng = np.random.default_rng(4)
    test = ref + 0.05 * rng.standard_normal(ref.shape)
    mask = metrics.foreground_mask(ref, "MR")
    near = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3)), iterations=3)  # the window reach
    flattened = np.where(near, test, ref)
    whole_gain = metrics.ssim(ref, flattened, None, data_range=1) - metrics.ssim(ref, test, None, data_range=1)
    masked_gain = metrics.ssim(ref, flattened, mask, data_range=1) - metrics.ssim(ref, test, mask, data_range=1)
    assert whole_gain > 0.01
    assert abs(masked_gain) < 1e-9


def test_ssim_monai_without_mask_equals_ssimmetric() -> None:
    import torch
    from monai.metrics import SSIMMetric

    ref = _phantom((24, 26, 22)) * 2000.0 - 1000.0
    test = ref + 60.0 * np.random.default_rng(5).standard_normal(ref.shape)
    metric = SSIMMetric(spatial_dims=3, data_range=2000.0)
    expected = float(metric(torch.tensor(test[None, None]).float(), torch.tensor(ref[None, None]).float()).item())
    got = metrics.ssim_monai(ref, test, None, data_range=2000.0)
    assert got == pytest.approx(expected, abs=1e-4)
    # a different window: a different number (why both carry a label)
    assert abs(got - metrics.ssim(ref, test, None, data_range=2000.0)) > 1e-3


# ---------------------------------------------------------------- masks and windows


def test_mr_mask_fills_holes_and_drops_specks() -> None:
    image = _phantom()
    image[12:16, 14:18, 10:14] = 0.0  # a dark "ventricle" inside
    image[0, 0, 0] = 1.0  # a bright speck outside
    mask = metrics.foreground_mask(image, "MR")
    assert mask[13, 15, 11]
    assert not mask[0, 0, 0]
    assert mask.sum() >= (image > 0.1 * np.percentile(image, 99)).sum() - 1


def _body(shape: tuple[int, int, int] = (40, 40, 6)) -> np.ndarray:
    x, y = np.meshgrid(np.arange(shape[0]) - 20, np.arange(shape[1]) - 20, indexing="ij")
    ct = np.full(shape, -1000.0, dtype=np.float32)
    body = x**2 / 16**2 + y**2 / 12**2 < 1
    lung = (x - 7) ** 2 + y**2 < 5**2
    ct[body] = 40.0
    ct[lung] = -850.0
    return ct


def test_ct_body_mask_includes_lungs_excludes_outside_air() -> None:
    ct = _body()
    mask = metrics.foreground_mask(ct, "CT", slice_axis=2)
    assert mask[27, 20, 3]  # lung inside the body
    assert not mask[1, 1, 3]  # air outside
    assert mask[20, 20].all()
    # a lung cut open by the box face still counts as body (per-slice convex hull)
    opened = ct[:, :, :]
    opened[25:, 18:23] = -850.0
    assert metrics.foreground_mask(opened, "CT", slice_axis=2)[30, 20, 3]


def test_window_and_default_data_range() -> None:
    ct = _body()
    assert metrics.apply_window(ct, (-1000, 1000)).min() >= -1000
    assert metrics.default_data_range(ct, metrics.CT_WINDOW)[0] == 2000.0
    assert metrics.default_data_range(_phantom() * 3.0)[0] == pytest.approx(float((_phantom() * 3).max()))
    with pytest.raises(MedidiffError):
        metrics.apply_window(ct, (5.0, 1.0))


def test_background_mask_and_rayleigh_sigma() -> None:
    from medidiff.noise import add_rician_numpy

    clean = _phantom((40, 40, 40))
    noisy = add_rician_numpy(clean, 0.05, np.random.default_rng(6))
    fg = metrics.foreground_mask(clean, "MR")
    bg = metrics.background_mask(noisy, "MR", foreground=fg)
    assert not (bg & fg).any()
    stats = metrics.background_noise(noisy, bg, "MR")
    assert stats["background_sigma_rayleigh"] == pytest.approx(0.05, rel=0.05)
    assert stats["background_std"] == pytest.approx(0.655 * 0.05, rel=0.1)


# ---------------------------------------------------------------- geometry


def test_geometry_mismatch_is_one_line_error() -> None:
    ref = Volume.from_array(_phantom())
    with pytest.raises(MedidiffError, match="shape") as info:
        metrics.check_geometry(ref, Volume.from_array(_phantom((28, 32, 20))))
    assert "\n" not in str(info.value)
    moved = np.eye(4)
    moved[0, 3] = 0.01
    with pytest.raises(MedidiffError, match="affine"):
        metrics.check_geometry(ref, Volume.from_array(_phantom(), affine=moved))
    moved[0, 3] = 1e-4  # within tolerance
    metrics.check_geometry(ref, Volume.from_array(_phantom(), affine=moved))


def test_axial_axis_from_affine() -> None:
    assert metrics.axial_axis(np.diag([1.0, 1.0, 1.0, 1.0])) == 2
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert metrics.axial_axis(coronal) == 1


# ---------------------------------------------------------------- no-reference measures


def test_residual_correlation_flags_removed_anatomy() -> None:
    clean = _phantom((40, 40, 40))
    rng = np.random.default_rng(7)
    noise = 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
    noisy = clean + noise
    mask = metrics.foreground_mask(clean, "MR")
    ideal = metrics.residual_measures(noisy, clean, mask)  # residual = pure noise
    blurred = metrics.residual_measures(noisy, ndimage.gaussian_filter(noisy, 2.0), mask)
    assert abs(ideal["residual_corr_structure"]) < 0.05
    assert abs(ideal["residual_corr_output"]) < 0.05
    assert abs(ideal["residual_mean"]) < 0.005
    assert ideal["residual_std"] == pytest.approx(0.05, rel=0.05)
    assert blurred["residual_corr_structure"] > ideal["residual_corr_structure"] + 0.1


def test_contrast_and_cnr() -> None:
    rng = np.random.default_rng(8)
    image = rng.standard_normal((20, 20, 20))
    a = np.zeros(image.shape, bool)
    b = np.zeros(image.shape, bool)
    a[:10] = True
    b[10:] = True
    image[a] += 3.0
    out = metrics.contrast_measures(image, a, b)
    pooled = math.sqrt((image[a].var() + image[b].var()) / 2)
    assert out["contrast"] == pytest.approx(image[a].mean() - image[b].mean())
    assert out["cnr"] == pytest.approx(abs(out["contrast"]) / pooled)
    with pytest.raises(MedidiffError):
        metrics.contrast_measures(image, a, np.zeros(image.shape, bool))
