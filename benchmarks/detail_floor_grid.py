"""How the MR detail step was set: ``refine.shrink_faint_detail`` after guided averaging, on a grid.

Usage: python benchmarks/detail_floor_grid.py [--data-dir DIR] [--brain CONFIG DATA_DIR ...]

Each scan is denoised once with ``medidiff denoise``'s defaults but the detail step off
(``detail_floor=0``, sigma estimated); the step then runs on that output for each
(smoothing, window, floor) of ``GRID``, with the same estimated sigma, as the denoiser runs it
(the denoiser applies it to the box around the signal, this script to the whole volume: they
differ only in the background at the box's edge). Scans:

- the benchmark's Colin27 inputs at 3, 5 and 9 % (``make_samples`` on configs/benchmark.yaml, the
  noise draws of docs/benchmarks.md), scored as the benchmark scores them;
- with ``--brain CONFIG DATA_DIR`` (repeatable), the MR cases of another benchmark config
  (``benchmarks/mr_mni152.yaml``, ``benchmarks/mr_phantom_head.yaml``), scored the same way;
- the two MR training scans recorrupted at 3, 5 and 9 % (the draws of ``guided_radius_grid.py``),
  scored against the recorrupted target with its noise taken out (as ``mr_model_default.py``).

It prints the scores with the step off, then each setting's change in PSNR (dB) / SSIM per case.
docs/design.md (section 4, "Faint detail") quotes the output.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from guided_radius_grid import recorrupt, recorrupted_psnr
from mr_training_scans import training_scans
from network_sigma_scale import ssim_noisy_reference

# (smoothing, window, floor): the shipped setting is (0.7, 1.5, 0.05)
GRID = (
    (0.7, 1.5, 0.03), (0.7, 1.5, 0.05), (0.7, 1.5, 0.06), (0.7, 1.5, 0.08),
    (0.7, 1.0, 0.05), (0.7, 2.0, 0.05),
    (1.0, 1.5, 0.05), (1.0, 1.5, 0.08),
    (1.5, 1.5, 0.05), (1.5, 1.5, 0.08), (1.5, 1.5, 0.12),
    (2.0, 1.5, 0.08),
)  # fmt: skip


def main() -> None:
    from medidiff.benchmark import _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.refine import shrink_faint_detail
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    parser.add_argument("--brain", nargs=2, action="append", default=[], metavar=("CONFIG", "DATA_DIR"))
    args = parser.parse_args()
    den = Denoiser(model="mr", device="cpu")

    def off(y: np.ndarray, affine: np.ndarray, sigma: float | None = None) -> np.ndarray:
        volume = Volume.from_array(y, affine, modality="MR")
        return den.denoise_volume(volume, sigma=sigma, detail_floor=0).volume.data[0]

    # (name, output with the step off, estimated sigma, scorer)
    cases: list[tuple[str, np.ndarray, float, Callable[[np.ndarray], tuple[float, float]]]] = []
    brains = [s for s in make_samples(load_benchmark_config(data_dir=args.data_dir)) if s.case.modality == "MR"]
    for config, data_dir in args.brain:
        brains += [s for s in make_samples(load_benchmark_config(config, data_dir=data_dir)) if s.case.modality == "MR"]
    for sample in brains:
        out = off(sample.noisy, sample.affine)
        cases.append((f"{sample.case.name} {sample.level:g} %", out, estimate_sigma(sample.noisy, "MR"),
                      lambda x, s=sample: _score(s, x)))
        print(f"denoised {cases[-1][0]}", flush=True)
    for name, r, mask in training_scans(args.data_dir):
        own = estimate_sigma(r, "MR")
        for level in (3.0, 5.0, 9.0):
            y, target, target_var = recorrupt(r, own, level / 100, [11, int(level)])
            sigma = estimate_sigma(y, "MR")
            cases.append((f"{name} {level:g} % (recorrupted)", off(y, np.eye(4), sigma), sigma,
                          lambda x, t=target, m=mask, v=target_var: (recorrupted_psnr(x, t, m, v),
                                                                    ssim_noisy_reference(t, x, m, v))))
            print(f"denoised {cases[-1][0]}", flush=True)
    base = {name: score(out) for name, out, _, score in cases}
    print("detail step off: " + "; ".join(f"{n} {p:.3f} / {q:.5f}" for n, (p, q) in base.items()), flush=True)
    for smoothing, window, floor in GRID:
        changes = []
        for name, out, sigma, score in cases:
            p, q = score(shrink_faint_detail(out, sigma, floor, smoothing=smoothing, window=window))
            changes.append(f"{name} {p - base[name][0]:+.3f} / {q - base[name][1]:+.5f}")
        print(f"smoothing {smoothing:g}, window {window:g}, floor {floor:g}: " + "; ".join(changes), flush=True)


if __name__ == "__main__":
    main()
