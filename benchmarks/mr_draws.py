"""medidiff's default against BM4D on the benchmark's MR case over several noise draws.

Usage: python benchmarks/mr_draws.py LEVEL --seeds 1 2 3 [--config YAML] [--data-dir DIR]

The benchmark scores one Rician draw per level (``seed: 0`` in configs/benchmark.yaml). Where the
two methods are close, that single draw can decide the row; this script repeats the comparison
with other seeds (each seed gives the draw that ``seed: N`` would give the benchmark, at the same
case index and level) and prints PSNR and SSIM unrounded, run and scored exactly as the benchmark
runs and scores them (``medidiff.benchmark.run_method``). medidiff runs with its defaults (sigma
estimated), BM4D with the true sigma (the ``bm4d`` package must be installed; about 5-6 minutes per
draw on 2 cores). docs/benchmarks.md quotes its output.
"""

from __future__ import annotations

import argparse
import dataclasses


def main() -> None:
    from medidiff.benchmark import _score, load_benchmark_config, make_samples, run_method

    parser = argparse.ArgumentParser()
    parser.add_argument("level", type=float, help="Rician noise level in percent")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    base = load_benchmark_config(args.config, data_dir=args.data_dir)
    index = next(i for i, case in enumerate(base.cases) if case.modality == "MR")
    # the cases before the MR case stay (and are simulated), so that its draw keeps its case index
    cases = [dataclasses.replace(case, noise_levels=[args.level]) for case in base.cases[: index + 1]]
    gaps = []
    for seed in args.seeds:
        cfg = dataclasses.replace(base, seed=seed, cases=cases)
        sample = make_samples(cfg)[index]
        ours, theirs = (run_method(name, sample, cfg) for name in ("medidiff", "bm4d"))
        (ours_psnr, ours_ssim), (bm4d_psnr, bm4d_ssim) = _score(sample, ours.denoised), _score(sample, theirs.denoised)
        gaps.append((ours_psnr - bm4d_psnr, ours_ssim - bm4d_ssim))
        print(
            f"{sample.case.name} {args.level:g} % seed {seed}: medidiff {ours_psnr:.3f} / {ours_ssim:.6f} "
            f"({ours.run_s:.1f} s), BM4D {bm4d_psnr:.3f} / {bm4d_ssim:.6f} ({theirs.run_s:.1f} s), "
            f"difference {gaps[-1][0]:+.3f} dB / {gaps[-1][1]:+.6f}",
            flush=True,
        )
    print(
        f"over {len(gaps)} draws: PSNR difference {min(g[0] for g in gaps):+.3f} to {max(g[0] for g in gaps):+.3f} dB, "
        f"SSIM difference {min(g[1] for g in gaps):+.6f} to {max(g[1] for g in gaps):+.6f}; "
        f"medidiff ahead in SSIM on {sum(g[1] > 0 for g in gaps)} of {len(gaps)}"
    )


if __name__ == "__main__":
    main()
