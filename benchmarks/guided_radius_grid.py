"""How the MR neighbourhood of guided averaging was sized: a grid on the MR *training* scans.

Usage: python benchmarks/guided_radius_grid.py [--data-dir DIR] [--levels 3 5 9]

The training scans carry noise of their own (about 1.2 % and 2.5 % of their 99.9th percentile), and
scored against the raw scan a denoiser is rewarded for keeping it; that bias favours small
neighbourhoods. So each scan ``r`` (own noise ``s_r``, estimated) is *recorrupted* instead
(Pang et al. 2021, "Recorrupted-to-Recorrupted"): the input is ``r + a z`` (as Rician magnitude,
``z ~ N(0, s_r^2)`` on each channel, ``a`` chosen so that the total noise is the level asked for) and
the target is ``t = r - z / a``. The noise of input and target is then uncorrelated (to first order
for the Rician input), so ``mean((out - t)^2) - s_r^2 (1 + 1/a^2)`` estimates the error against the
clean, unknown scan without the bias. PSNR (peak 1) from that estimate, over the foreground mask.
SSIM is against ``t``, which is noisy: it still favours keeping noise, read it for direction only.

The bundled MR model denoises each input once without guided averaging (sigma estimated, as a user
would run it); ``medidiff.refine.guided_average`` then runs over each (radius, strength, width). The
last lines give each setting's mean and worst change against the ball of radius 3 (123 voxels, the
size of the earlier 5x5x5 cube). The held-out Colin27 brain is not used; docs/design.md (section 4)
quotes the output.
"""

from __future__ import annotations

import numpy as np
from mr_training_scans import SCANS, network_estimate, parse_args, training_scans

BASE = (3.0, 1.0, 2.5)
# (radius in voxels, strength, local-means width)
GRID = (BASE, (2.0, 1.0, 2.5), (3.5, 1.0, 2.5), (3.7, 1.0, 2.5), (4.0, 1.0, 2.5), (3.7, 0.9, 2.5), (3.7, 1.0, 3.0))


def recorrupt(r: np.ndarray, own: float, level: float, seed: list[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Input, target and the target's noise variance for a scan ``r`` with noise ``own``, input at ``level``."""
    a = float(np.sqrt(level**2 / own**2 - 1.0))
    rng = np.random.default_rng(seed)
    z1 = rng.normal(0.0, own, r.shape).astype(np.float32)
    z2 = rng.normal(0.0, own, r.shape).astype(np.float32)
    y = np.sqrt((r + a * z1) ** 2 + (a * z2) ** 2).astype(np.float32)
    return y, (r - z1 / a).astype(np.float32), own**2 * (1.0 + 1.0 / a**2)


def recorrupted_psnr(out: np.ndarray, target: np.ndarray, mask: np.ndarray, target_var: float) -> float:
    """PSNR (peak 1) over ``mask`` from the squared error against ``target`` less its noise variance."""
    mse = float(np.mean((out - target)[mask].astype(np.float64) ** 2)) - target_var
    return 10.0 * np.log10(1.0 / mse)


def main() -> None:
    from medidiff import metrics
    from medidiff.inference import Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.refine import guided_average

    args = parse_args()
    denoiser = Denoiser(model="mr")
    scores: dict[tuple, tuple[float, float]] = {}
    for scan, r, mask in training_scans(args.data_dir):
        own = estimate_sigma(r, "MR")
        for level in args.levels:
            y, target, target_var = recorrupt(r, own, level / 100, [11, int(level)])
            sigma = estimate_sigma(y, "MR")
            estimate = network_estimate(denoiser, y, sigma, scale=1.0)  # at the estimate, as measured
            print(f"{scan} {level:g} %: own noise {own:.4f}, sigma estimated {sigma:.4f}", flush=True)
            for setting in GRID:
                radius, strength, width = setting
                out = guided_average(y, estimate, sigma, rician=True, radius=radius, strength=strength,
                                     data_width=width)
                score = (recorrupted_psnr(out, target, mask, target_var),
                         metrics.ssim(target, out, mask, data_range=1.0))
                scores[(scan, level, setting)] = score
                print(f"  radius {radius} strength {strength} width {width}: {score[0]:.3f} dB / {score[1]:.4f}",
                      flush=True)
    print("change against radius 3 (strength 1, width 2.5), over both scans and all levels: PSNR dB, SSIM")
    for setting in GRID[1:]:
        d = np.array([np.subtract(scores[(s, lv, setting)], scores[(s, lv, BASE)])
                      for s in SCANS for lv in args.levels])
        print(f"radius {setting[0]} strength {setting[1]} width {setting[2]}: mean {d[:, 0].mean():+.3f} / "
              f"{d[:, 1].mean():+.4f}, worst {d[:, 0].min():+.3f} / {d[:, 1].min():+.4f}")


if __name__ == "__main__":
    main()
