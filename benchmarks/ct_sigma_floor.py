"""CT: how medidiff's score moves when part of the estimated noise is left in (a "noise floor").

Usage: python benchmarks/ct_sigma_floor.py [--model MODEL] [--floors 0 10 15 20 25] [--steps 3 5]
       [--data-dir DIR]

Both reference CT scans (the held-out chest CTA and the abdomen the bundled CT model was trained
on) get the same projection-domain noise at 25 and 50 HU as in ``configs/benchmark.yaml`` (chest)
and ``benchmarks/ct_abdomen_in_sample.yaml`` (abdomen): the same draws, so the floor-0 rows repeat
those benchmarks' ``medidiff-net`` rows (no blend: the network's estimate). medidiff estimates
sigma as usual; each row then denoises with ``sqrt(estimate^2 - floor^2)``, the noise a
routine-dose scan would keep left in, and a last row
uses the true sigma of the added noise. Scores are the benchmark's (HU window [-1000, 1000], body
mask) against the reference scan, which carries noise of its own. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# (config, case name): each case is simulated at its index in its own benchmark config, which seeds its noise
CASES = [
    (HERE.parent / "configs" / "benchmark.yaml", "ct_chest_cta"),
    (HERE / "ct_abdomen_in_sample.yaml", "ct_abdomen"),
]


def main() -> None:
    import dataclasses

    from medidiff import benchmark
    from medidiff.inference import Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--floors", type=float, nargs="+", default=[0, 10, 15, 20, 25])
    parser.add_argument("--steps", type=int, nargs="+", default=[3])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    args = parser.parse_args()
    samples = []
    for config, name in CASES:
        cfg = benchmark.load_benchmark_config(config, data_dir=args.data_dir)
        # keep the case's index (it seeds the noise); the cases before it get one cheap level each
        cases = [c if c.name == name else dataclasses.replace(c, noise_levels=[1]) for c in cfg.cases]
        samples += [s for s in benchmark.make_samples(dataclasses.replace(cfg, cases=cases)) if s.case.name == name]
    den = Denoiser(model=args.model)
    for sample in samples:
        volume = Volume.from_array(sample.noisy, sample.affine, modality="CT")
        estimate = estimate_sigma(sample.noisy, "CT")  # what medidiff's default would use
        head = f"{sample.case.name} {sample.level:g} HU (true {sample.sigma_true:.1f}, estimate {estimate:.1f})"
        for steps in args.steps:
            for floor in args.floors:
                sigma = float(np.sqrt(max(estimate**2 - floor**2, 1.0)))
                out = den.denoise_volume(volume, modality="CT", steps=steps, sigma=sigma, blend=0.0).volume.data[0]
                psnr, ssim = benchmark._score(sample, out)
                print(f"{head}: steps {steps}, floor {floor:g} HU, sigma {sigma:.1f}: {psnr:.2f} dB / {ssim:.4f}")
            out = den.denoise_volume(
                volume, modality="CT", steps=steps, sigma=sample.sigma_true, blend=0.0
            ).volume.data[0]
            psnr, ssim = benchmark._score(sample, out)
            print(f"{head}: steps {steps}, true sigma: {psnr:.2f} dB / {ssim:.4f}", flush=True)


if __name__ == "__main__":
    main()
