"""Where medidiff's default output gains or loses against BM4D, by how flat the clean scan is.

Usage: python benchmarks/mr_bm4d_regions.py LEVEL [--config YAML] [--data-dir DIR]

Takes the benchmark's MR case of ``--config`` (configs/benchmark.yaml: Colin27;
benchmarks/mr_mni152.yaml: the MNI152 template) at LEVEL percent, the benchmark's noise draw.
medidiff denoises it with its defaults (sigma estimated), BM4D with the true sigma (the ``bm4d``
package must be installed; about 6 minutes on 2 cores). Over the benchmark's mask and over its
quarters by the clean scan's gradient magnitude (Gaussian, 1 voxel), it prints each method's mean
squared error and mean SSIM (``medidiff.metrics.ssim_map``, the map the benchmark's SSIM
averages), and each quarter's share of the difference in the mean SSIM. docs/benchmarks.md quotes
its output.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import bm4d  # type: ignore[import-not-found]  # installed for the comparison only
    from scipy import ndimage

    from medidiff import metrics
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
    maps = {}  # the SSIM maps over the mask's bounding box
    for name, out in outputs.items():
        box, maps[name] = metrics.ssim_map(clean, out, mask, data_range=sample.data_range)
    grad = ndimage.gaussian_gradient_magnitude(clean, 1.0)[box]
    clean, mask, outputs = clean[box], mask[box], {k: out[box] for k, out in outputs.items()}
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
