"""Zero-filled training patches (skull-stripped, defaced, cropped scans): masks and the data pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, write_phantom

from medidiff.errors import ConfigError
from medidiff.masking import random_mask, zero_outside_mask


def _blob(shape: tuple[int, int, int] = (32, 32, 32)) -> np.ndarray:
    """A bright ball in a dark surround with some texture, shaped (1, X, Y, Z)."""
    r = np.sqrt(((np.indices(shape) - np.array(shape)[:, None, None, None] / 2) ** 2).sum(0))
    texture = np.random.default_rng(3).random(shape) * 0.05
    return ((r < 10) * 0.8 + 0.1 + texture)[None].astype(np.float32)


def test_masked_patch_keeps_voxels_inside_and_zeroes_the_rest() -> None:
    patch = _blob()
    mask = random_mask(patch, np.random.default_rng(5))
    out = zero_outside_mask(patch, np.random.default_rng(5))
    assert out.shape == patch.shape and out.dtype == patch.dtype
    assert np.array_equal(out[0][mask], patch[0][mask])
    assert not out[0][~mask].any()
    assert 0 < mask.mean() < 1


def test_masks_are_a_function_of_the_generator_and_come_in_both_kinds() -> None:
    patch = _blob()
    a = [random_mask(patch, np.random.default_rng(k)) for k in range(40)]
    b = [random_mask(patch, np.random.default_rng(k)) for k in range(40)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # an anatomy mask keeps the bright ball and drops dark surround; a plane cuts the ball
    ball = _blob()[0] > 0.5
    keeps_ball = [bool(m[ball].all()) for m in a]
    assert any(keeps_ball) and not all(keeps_ball)


def test_anatomy_masks_keep_bright_tissue_rather_than_dark() -> None:
    patch = _blob()
    rng = np.random.default_rng(0)
    kept, dropped = [], []
    for _ in range(30):
        m = random_mask(patch, rng)
        if m.all() or not m.any():
            continue
        kept.append(patch[0][m].mean())
        dropped.append(patch[0][~m].mean())
    assert np.mean(kept) > np.mean(dropped) + 0.1


@pytest.mark.filterwarnings("ignore:Num foregrounds")  # a volume without background voxels
def test_dataset_zeroes_the_share_of_patches_asked_for(tmp_path: Path) -> None:
    import nibabel as nib

    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    folder = tmp_path / "scans"
    folder.mkdir()
    nib.save(nib.Nifti1Image(_blob((40, 40, 40))[0], np.eye(4)), folder / "a.nii.gz")  # no zero voxel

    def zero_share(fraction: float) -> float:
        cfg = load_config(str(TINY_CONFIG), [f"data.train={folder}", f"data.mask_fraction={fraction}",
                                             "data.foreground_fraction=1.0"])
        dataset = PatchDataset.from_config(cfg, "training")
        return float(np.mean([(dataset.sample(i)["x0"] == 0).float().mean() > 0.1 for i in range(40)]))

    assert zero_share(0.0) == 0.0
    assert zero_share(1.0) == 1.0
    assert 0.2 < zero_share(0.5) < 0.8


def test_mask_fraction_leaves_the_patch_stream_of_other_samples_alone(tmp_path: Path) -> None:
    """Masking draws from the sample's own generator after the patch: unmasked samples are unchanged."""
    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    folder = tmp_path / "scans"
    folder.mkdir()
    write_phantom(folder / "a.nii.gz", noise=0.0)
    plain = PatchDataset.from_config(load_config(str(TINY_CONFIG), [f"data.train={folder}"]), "training")
    masked = PatchDataset.from_config(
        load_config(str(TINY_CONFIG), [f"data.train={folder}", "data.mask_fraction=0.5"]), "training"
    )
    for i in range(10):
        a, b = plain.sample(i)["x0"], masked.sample(i)["x0"]
        keep = b != 0
        assert bool((a[keep] == b[keep]).all())


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_mask_fraction_outside_0_1_is_refused(value: str) -> None:
    from medidiff.config import load_config

    with pytest.raises(ConfigError, match="mask_fraction"):
        load_config(str(TINY_CONFIG), [f"data.mask_fraction={value}"])


def test_mask_fraction_with_recorrupt_targets_is_refused() -> None:
    from medidiff.config import load_config

    with pytest.raises(ConfigError, match="mask_fraction"):
        load_config(str(TINY_CONFIG), ["data.mask_fraction=0.3", "data.target_cleanup=recorrupt"])


def test_mask_fraction_with_image_pairs_is_refused(tmp_path: Path) -> None:
    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    clean = write_phantom(tmp_path / "clean.nii.gz", noise=0.0)
    noisy = write_phantom(tmp_path / "noisy.nii.gz", noise=0.05)
    datalist = tmp_path / "pairs.json"
    datalist.write_text(json.dumps({"training": [{"image": noisy.name, "target": clean.name}]}))
    cfg = load_config(str(TINY_CONFIG), [f"data.train={datalist}", "data.mask_fraction=0.3"])
    with pytest.raises(ConfigError, match="mask_fraction"):
        PatchDataset.from_config(cfg, "training")
