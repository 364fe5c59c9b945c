"""How the local-means term of guided averaging was set: a grid on the MR *training* scans.

Usage: python benchmarks/guided_means_grid.py [--data-dir DIR] [--levels 3 5 9]

The two MR training scans of the bundled model (seg3d T1 head, clinical T2), each scaled to its
99.9th percentile, get Rician noise at each level (seed ``[7, level]``); the bundled MR model
denoises them once in its default way but without guided averaging (sigma estimated, as a user
would run it), and ``medidiff.refine.guided_average`` is applied to that estimate over a grid of
(local-means smoothing, local-means width, strength). PSNR (peak 1) and SSIM over the foreground
mask, against the raw scan, which keeps its own noise (about 1.2 % and 2.5 %). The last lines give
each setting's mean and worst change against the term switched off. The held-out Colin27 brain is
not used; docs/design.md (section 4) quotes the output, measured when guided averaging ran over a
5x5x5 cube; the script now runs the current default neighbourhood (a ball of 3.7 voxels).
"""

from __future__ import annotations

import itertools

import numpy as np
from mr_training_scans import SCANS, network_estimate, parse_args, training_scans

OFF = (0.0, 2.5, 1.0)
# at the strength of the term-free filter (1), then two other strengths around the chosen point
GRID = (
    [OFF]
    + [(sm, c, 1.0) for sm, c in itertools.product((0.6, 0.75, 1.0), (1.5, 2.0, 2.5, 3.0, 4.0))]
    + [(0.75, c, a) for c, a in itertools.product((2.0, 2.5), (0.75, 1.5))]
)


def main() -> None:
    from medidiff import metrics
    from medidiff.inference import Denoiser
    from medidiff.noise import add_rician_numpy, estimate_sigma
    from medidiff.refine import guided_average

    args = parse_args()
    denoiser = Denoiser(model="mr")
    scores: dict[tuple, tuple[float, float]] = {}
    for scan, x, mask in training_scans(args.data_dir):
        for level in args.levels:
            y = add_rician_numpy(x, level / 100, np.random.default_rng([7, int(level)])).astype(np.float32)
            sigma = estimate_sigma(y, "MR")
            estimate = network_estimate(denoiser, y, sigma, scale=1.0)  # at the estimate, as measured
            for setting in GRID:
                sm, c, a = setting
                out = guided_average(y, estimate, sigma, rician=True, strength=a, data_smoothing=sm, data_width=c)
                score = (metrics.psnr(x, out, mask, data_range=1.0), metrics.ssim(x, out, mask, data_range=1.0))
                scores[(scan, level, setting)] = score
                print(f"{scan} {level:g} % smoothing {sm} width {c} strength {a}: {score[0]:.3f} dB / {score[1]:.4f}",
                      flush=True)
    print("change against the term off (smoothing 0), over both scans and all levels: PSNR dB, SSIM")
    for setting in GRID[1:]:
        d = np.array([np.subtract(scores[(s, lv, setting)], scores[(s, lv, OFF)]) for s in SCANS for lv in args.levels])
        print(f"smoothing {setting[0]} width {setting[1]} strength {setting[2]}: mean {d[:, 0].mean():+.3f} / "
              f"{d[:, 1].mean():+.4f}, worst {d[:, 0].min():+.3f} / {d[:, 1].min():+.4f}")


if __name__ == "__main__":
    main()
