"""Where medidiff's default output gains or loses against BM4D, by how flat the clean scan is.

Usage: python benchmarks/mr_bm4d_regions.py LEVEL [--config YAML] [--data-dir DIR]

Takes the benchmark's MR case of ``--config`` (configs/benchmark.yaml: Colin27;
benchmarks/mr_mni152.yaml: the MNI152 template) at LEVEL percent, the benchmark's noise draw.
medidiff denoises it with its defaults (sigma estimated), BM4D with the true sigma (the ``bm4d``
package must be installed; about 6 minutes on 2 cores). Over the benchmark's mask and over its
quarters by the clean scan's gradient magnitude (Gaussian, 1 voxel), it prints each method's mean
squared error and mean SSIM (the benchmark's SSIM map: 7-voxel uniform window, K1 0.01, K2 0.03,
peak 1), and each quarter's share of the difference in the mean SSIM. docs/benchmarks.md quotes
its output.
"""

from __future__ import annotations

import argparse

import numpy as np


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The benchmark's local SSIM at every voxel (scikit-image's formula, sample covariances)."""
    from scipy import ndimage

    from medidiff.metrics import SSIM_WINDOW

    def mean(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, SSIM_WINDOW)

    x, y = x.astype(np.float64), y.astype(np.float64)
    n = SSIM_WINDOW**3
    unbiased = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx, vy = unbiased * (mean(x * x) - ux * ux), unbiased * (mean(y * y) - uy * uy)
    vxy = unbiased * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    return (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def main() -> None:
    import bm4d  # type: ignore[import-not-found]  # installed for the comparison only
    from scipy import ndimage

    from medidiff.benchmark import load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("level", type=float, help="Rician noise level in percent (one of the config's levels)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    cfg = load_benchmark_config(args.config, data_dir=args.data_dir)
    sample = next(s for s in make_samples(cfg) if s.case.modality == "MR" and s.level == args.level)
    volume = Volume.from_array(sample.noisy, sample.affine, modality="MR")
    outputs = {
        "medidiff": Denoiser(model="mr", device="cpu").denoise_volume(volume).volume.data[0],
        "bm4d": np.asarray(bm4d.bm4d(sample.noisy, sigma_psd=sample.sigma_true), np.float32),
    }
    clean, mask = sample.clean.astype(np.float64), sample.mask
    maps = {name: ssim_map(clean, out) for name, out in outputs.items()}
    grad = ndimage.gaussian_gradient_magnitude(clean, 1.0)
    edges = np.quantile(grad[mask], [0.25, 0.5, 0.75])
    regions = {"all": mask}
    for i, (lo, hi) in enumerate(zip([-np.inf, *edges], [*edges, np.inf], strict=True)):
        regions[f"gradient quarter {i + 1} (1 = flattest)"] = mask & (grad > lo) & (grad <= hi)
    print(f"{sample.case.name} {args.level:g} %, {int(mask.sum())} voxels scored")
    for name, region in regions.items():
        mse = {k: float(np.mean((out[region] - clean[region]) ** 2)) for k, out in outputs.items()}
        ssim = {k: float(m[region].mean()) for k, m in maps.items()}
        share = float((maps["medidiff"][region] - maps["bm4d"][region]).sum() / mask.sum())
        print(
            f"  {name}: MSE medidiff {mse['medidiff']:.3e}, BM4D {mse['bm4d']:.3e}; SSIM medidiff "
            f"{ssim['medidiff']:.4f}, BM4D {ssim['bm4d']:.4f}; share of the mean SSIM difference {share:+.5f}"
        )


if __name__ == "__main__":
    main()
