"""Shared fixtures: tiny synthetic scans and a tiny trained model (a few seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "reference"
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def reference_scan(name: str) -> Path:
    """Path of a reference scan, or skip the test with the reason."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference scan {path} is not available (the shared data folder is absent)")
    return path


def write_phantom(path: Path, shape: tuple[int, int, int] = (24, 28, 24), seed: int = 0, noise: float = 0.05,
                  dtype: type = np.float32) -> Path:
    """A small noisy head phantom as NIfTI (RAS, 2 mm)."""
    import nibabel as nib

    from medidiff.noise import add_rician_numpy
    from medidiff.phantom import head_phantom, phantom_affine

    clean = head_phantom(shape, seed=seed)
    data = add_rician_numpy(clean, noise, np.random.default_rng(seed)) if noise else clean
    if np.issubdtype(dtype, np.integer):
        data = np.round(data * 1000).astype(dtype)
    nib.save(nib.Nifti1Image(data.astype(dtype), phantom_affine(shape)), str(path))
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    for i in range(2):
        write_phantom(folder / f"head{i}.nii.gz", seed=i, noise=0.0)
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path) -> Path:
    """A run folder of configs/tiny.yaml trained 6 steps on phantoms."""
    from medidiff.training import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(str(TINY_CONFIG), [f"data.train={phantom_dir}", f"data.val={phantom_dir}", f"output_dir={run}"],
          progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported as one .safetensors model file."""
    from medidiff.checkpoint import export_model

    out = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return export_model(tiny_run, out)


@pytest.fixture()
def noisy_scan(tmp_path: Path) -> Path:
    return write_phantom(tmp_path / "scan.nii.gz")
