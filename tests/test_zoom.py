"""Zoomed training patches (anatomy on finer grids than the training scans'): data.zoom_fraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, write_phantom

from medidiff.data import zoom_in
from medidiff.errors import ConfigError


def _noise_patch() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).random((1, 24, 20, 16)).astype(np.float32))


def _roughness(x: torch.Tensor) -> float:
    return float(sum((x.diff(dim=d).abs().mean()) for d in (1, 2, 3)))


def test_zoom_in_keeps_the_shape_and_a_factor_of_one_keeps_the_patch() -> None:
    patch = _noise_patch()
    same = zoom_in(patch, np.random.default_rng(1), 1.0)
    assert same.shape == patch.shape
    torch.testing.assert_close(same, patch)


def test_zoom_in_enlarges_a_sub_block_so_the_patch_gets_smoother() -> None:
    patch = _noise_patch()
    zoomed = zoom_in(patch, np.random.default_rng(1), 3.0)
    assert zoomed.shape == patch.shape
    assert _roughness(zoomed) < 0.8 * _roughness(patch)
    assert zoomed.min() >= patch.min() and zoomed.max() <= patch.max()  # interpolation, no overshoot
    again = zoom_in(patch, np.random.default_rng(1), 3.0)
    torch.testing.assert_close(zoomed, again)  # a pure function of the generator


def _datasets(folder: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    cfg = load_config(str(TINY_CONFIG), [f"data.train={folder}", f"data.val={folder}", *overrides])
    return PatchDataset.from_config(cfg, "training"), PatchDataset.from_config(cfg, "validation")


def test_zoom_fraction_zooms_that_share_of_training_patches_and_no_validation_patch(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_phantom(folder / "a.nii.gz", noise=0.05)
    plain, _ = _datasets(folder)
    for fraction, low, high in ((1.0, 1.0, 1.0), (0.5, 0.2, 0.8)):
        zoomed, val = _datasets(folder, f"data.zoom_fraction={fraction}", "data.zoom_max=3")
        changed = [not torch.equal(plain.sample(i)["x0"], zoomed.sample(i)["x0"]) for i in range(30)]
        assert low <= np.mean(changed) <= high, np.mean(changed)
        assert torch.equal(zoomed.sample(3)["x0"], zoomed.sample(3)["x0"])
        assert val.zoom_fraction == 0.0
    smoother = np.mean([_roughness(zoomed.sample(i)["x0"]) < _roughness(plain.sample(i)["x0"]) for i in range(30)])
    assert smoother > 0.2  # the zoomed half of the patches lost the noise's voxel-to-voxel jumps


@pytest.mark.parametrize("override", ["data.zoom_fraction=-0.1", "data.zoom_fraction=1.5", "data.zoom_max=0.5",
                                      "data.zoom_max=5"])
def test_zoom_settings_out_of_range_are_refused(override: str) -> None:
    from medidiff.config import load_config

    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(str(TINY_CONFIG), [override])


def test_zoom_with_recorrupt_targets_or_image_pairs_is_refused(tmp_path: Path) -> None:
    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    with pytest.raises(ConfigError, match="zoom_fraction"):
        load_config(str(TINY_CONFIG), ["data.zoom_fraction=0.5", "data.zoom_max=2", "data.target_cleanup=recorrupt"])
    clean = write_phantom(tmp_path / "clean.nii.gz", noise=0.0)
    noisy = write_phantom(tmp_path / "noisy.nii.gz", noise=0.05)
    datalist = tmp_path / "pairs.json"
    datalist.write_text(json.dumps({"training": [{"image": noisy.name, "target": clean.name}]}))
    cfg = load_config(str(TINY_CONFIG), [f"data.train={datalist}", "data.zoom_fraction=0.5", "data.zoom_max=2"])
    with pytest.raises(ConfigError, match="zoom_fraction"):
        PatchDataset.from_config(cfg, "training")
