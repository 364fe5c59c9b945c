"""How the MR network's noise level was set: the network told ``S x`` the estimated sigma.

Usage: python benchmarks/network_sigma_scale.py [--data-dir DIR] [--levels 3 5 9] [--scales 1 1.1 1.2]
       [--config configs/benchmark.yaml]

For each scale ``S`` the bundled MR model denoises each input once, told ``S`` times the estimated
sigma and without guided averaging; ``medidiff.refine.guided_average`` then runs on that estimate at
the estimated sigma itself, as ``medidiff denoise --network-sigma-scale S`` does. Two sets of scans:

- the MR *training* scans, recorrupted as in ``guided_radius_grid.py`` (input ``r + a z``, target
  ``r - z / a``, the same draws): PSNR from the squared error less the target's noise variance, and
  SSIM with the target's local variance less that same noise variance (the SSIM of the benchmark
  otherwise: 7-voxel uniform window, K1 0.01, K2 0.03, peak 1). The network has seen these scans.
- the held-out Colin27 brain at the benchmark's noise draws (``make_samples`` on the config), scored
  against the clean scan as the benchmark scores it.

Each set ends with every scale's mean and worst change against ``S`` = 1. docs/design.md (section
4) quotes the output.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from guided_radius_grid import recorrupt, recorrupted_psnr
from mr_training_scans import network_estimate, parse_args, training_scans


def ssim_noisy_reference(target: np.ndarray, test: np.ndarray, mask: np.ndarray, noise_var: float) -> float:
    """The benchmark's SSIM of ``test`` against a ``target`` that carries white noise of ``noise_var``.

    The target's local variance is lowered by ``noise_var`` (floored at 0), which its noise adds in
    expectation; the other terms do not see noise that ``test`` does not share. With ``noise_var`` 0
    it equals ``medidiff.metrics.ssim``.
    """
    from scipy import ndimage

    from medidiff.metrics import SSIM_WINDOW, mask_box

    box = mask_box(mask, min_size=SSIM_WINDOW)
    x = target[box].astype(np.float64)
    y = test[box].astype(np.float64)

    def mean(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, SSIM_WINDOW)

    n = SSIM_WINDOW**3
    unbiased = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = np.maximum(unbiased * (mean(x * x) - ux * ux) - noise_var, 0.0)
    vy = unbiased * (mean(y * y) - uy * uy)
    vxy = unbiased * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    smap = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(smap[mask[box]].mean())


def summary(scores: dict[tuple, tuple[float, float]], cases: list, scales: list[float]) -> None:
    for scale in scales[1:]:
        d = np.array([np.subtract(scores[(case, scale)], scores[(case, scales[0])]) for case in cases])
        print(f"  scale {scale:g} against {scales[0]:g}: mean {d[:, 0].mean():+.3f} dB / {d[:, 1].mean():+.4f}, "
              f"worst {d[:, 0].min():+.3f} dB / {d[:, 1].min():+.4f}")


def main() -> None:
    from medidiff import metrics
    from medidiff.benchmark import load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.refine import guided_average

    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.1, 1.2])
        parser.add_argument("--config", default=None, help="benchmark config with the Colin27 case")

    args = parse_args(more)
    denoiser = Denoiser(model="mr")

    def default_at(y: np.ndarray, sigma: float, scale: float) -> np.ndarray:
        return guided_average(y, network_estimate(denoiser, y, sigma, scale), sigma, rician=True)

    print("MR training scans, recorrupted (the network has seen them): PSNR dB / SSIM, noise-corrected")
    scores: dict[tuple, tuple[float, float]] = {}
    cases = []
    for scan, r, mask in training_scans(args.data_dir):
        own = estimate_sigma(r, "MR")
        for level in args.levels:
            y, target, target_var = recorrupt(r, own, level / 100, [11, int(level)])
            sigma = estimate_sigma(y, "MR")
            cases.append((scan, level))
            for scale in args.scales:
                out = default_at(y, sigma, scale)
                scores[(cases[-1], scale)] = (recorrupted_psnr(out, target, mask, target_var),
                                              ssim_noisy_reference(target, out, mask, target_var))
                print(f"  {scan} {level:g} %, scale {scale:g}: {scores[(cases[-1], scale)][0]:.3f} / "
                      f"{scores[(cases[-1], scale)][1]:.4f}", flush=True)
    summary(scores, cases, args.scales)

    print("Colin27 (held out), the benchmark's draws: PSNR dB / SSIM against the clean scan")
    cfg = load_benchmark_config(args.config)
    # other cases keep their place (the noise seed depends on it) but draw no level
    picked = [dataclasses.replace(c, noise_levels=args.levels if c.modality == "MR" else []) for c in cfg.cases]
    scores, cases = {}, []
    for sample in make_samples(dataclasses.replace(cfg, cases=picked)):
        if sample.case.modality != "MR":
            continue
        mask = sample.mask.astype(bool)
        sigma = estimate_sigma(sample.noisy, "MR")
        cases.append(sample.level)
        for scale in args.scales:
            out = default_at(sample.noisy, sigma, scale)
            scores[(sample.level, scale)] = (metrics.psnr(sample.clean, out, mask, data_range=1.0),
                                             metrics.ssim(sample.clean, out, mask, data_range=1.0))
            print(f"  {sample.level:g} %, scale {scale:g}: {scores[(sample.level, scale)][0]:.3f} / "
                  f"{scores[(sample.level, scale)][1]:.4f}", flush=True)
    summary(scores, cases, args.scales)


if __name__ == "__main__":
    main()
