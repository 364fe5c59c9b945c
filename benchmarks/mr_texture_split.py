"""Where the MR default loses SSIM to BM4D on Colin27: flat tissue, and texture traded for noise.

Usage: python benchmarks/mr_texture_split.py LEVEL [--bm4d] [--config configs/benchmark.yaml]

LEVEL is the Rician noise level in percent; at the config's levels (3, 5, 9) the noise draw is the
benchmark's own (``make_samples`` on the config), so the numbers line up with docs/benchmarks.md.
The default (guided averaging) and the network alone (``guided_radius=0``) run as the benchmark
runs them, estimating sigma; ``--bm4d`` adds BM4D given the true sigma (about 4-5 minutes, the
optional ``bm4d`` package).

For each output it prints SSIM (the benchmark's uniform 7-voxel window) over the foreground split
by quartiles of the clean scan's gradient magnitude (Gaussian, 1 voxel) and the top tenth, and,
in the flattest quarter, a least-squares fit of the output's high-pass error (above a 2-voxel
Gaussian) as ``alpha x texture + beta x noise``: ``texture`` the clean scan's high-pass part,
``noise`` the added noise's. alpha near 0 keeps the texture, -1 removes it; beta is the share of
the noise left in. docs/benchmarks.md and docs/design.md (section 4) quote its output.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np


def main() -> None:
    from scipy import ndimage

    from medidiff.benchmark import _bm4d, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.metrics import ssim_map
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("level", type=float, help="Rician noise level in percent (3, 5, 9: the benchmark's draws)")
    parser.add_argument("--bm4d", action="store_true", help="add BM4D given the true sigma (slow)")
    parser.add_argument("--config", default=None)
    args = parser.parse_args()

    cfg = load_benchmark_config(args.config)
    cases = [dataclasses.replace(c, noise_levels=[args.level]) for c in cfg.cases]
    samples = make_samples(dataclasses.replace(cfg, cases=cases), modality="MR")
    if not samples:
        raise SystemExit(f"no MR case in the benchmark config at {args.level:g} %")
    sample = samples[0]
    clean, noisy, mask = sample.clean, sample.noisy, sample.mask.astype(bool)

    denoiser = Denoiser()
    volume = Volume.from_array(noisy, sample.affine, modality="MR")
    outputs = {
        "medidiff (default)": denoiser.denoise_volume(volume, modality="MR").volume.data[0],
        "network alone": denoiser.denoise_volume(volume, modality="MR", guided_radius=0).volume.data[0],
    }
    if args.bm4d:
        outputs["BM4D (true sigma)"] = _bm4d(noisy, sample.sigma_true, False, cfg.classical)

    grad = ndimage.gaussian_gradient_magnitude(clean, 1.0)
    edges = np.quantile(grad[mask], [0, 0.25, 0.5, 0.75, 0.9, 1.0])
    bins = [mask & (grad >= lo) & (grad <= hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    flat = bins[0]

    def high_pass(v: np.ndarray) -> np.ndarray:
        return v - ndimage.gaussian_filter(v, 2.0)

    texture = high_pass(clean)
    noise = high_pass(noisy - clean)
    basis = np.stack([texture[flat], noise[flat]], 1).astype(np.float64)
    texture_rms = float(np.sqrt(np.mean(texture[flat] ** 2)))
    print(f"Colin27 at {args.level:g} %: texture in the flattest quarter {texture_rms:.4f} RMS")
    print("SSIM by gradient bin: q1 (flattest quarter), q2, q3, q4 below the top tenth, top tenth")
    for name, out in outputs.items():
        box, smap = ssim_map(clean, out, mask, data_range=1.0)  # the benchmark's SSIM, before averaging
        full = np.zeros(clean.shape)
        full[box] = smap
        ssim_bins = [float(full[b].mean()) for b in bins]
        (alpha, beta), *_ = np.linalg.lstsq(basis, high_pass(out - clean)[flat].astype(np.float64), rcond=None)
        print(
            f"{name}: SSIM {float(full[mask].mean()):.4f}; by bin {[round(v, 4) for v in ssim_bins]}; "
            f"flattest quarter: alpha {alpha:+.3f}, beta {beta:.3f}"
        )


if __name__ == "__main__":
    main()
