"""How close two training-target cleanups come to the truth at the training scans' own noise levels.

Usage: python benchmarks/target_cleanup_quality.py [MODEL] [--data-dir DIR]

The MR training scans carry Rician noise of their own (about 1.2 % and 2.5 % of the 99.9th
percentile, estimated). Their cleaned versions are the training targets, so what a cleanup leaves
or removes is what the model learns to leave or remove. The held-out Colin27 brain of
configs/benchmark.yaml (normalized as the benchmark does) gets Rician noise at those two levels
(seed 5), and is cleaned by DIPY's classic NLM at the true sigma (``data.target_cleanup: nlm``) and
by MODEL's default output (``medidiff denoise``, sigma estimated); each is scored as the benchmark
scores it. docs/model-card.md ("Stages 23, 24 and 25") quotes the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from dipy.denoise.nlmeans import nlmeans

    from medidiff.benchmark import _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.noise import add_rician_numpy

    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="mr")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    args = parser.parse_args()
    cfg = load_benchmark_config(data_dir=args.data_dir)
    sample = make_samples(cfg, modality="MR")[0]
    den = Denoiser(model=args.model, device="cpu")
    for level in (0.012, 0.025):
        noisy = add_rician_numpy(sample.clean, level, np.random.default_rng(5)).astype(np.float32)
        nlm = nlmeans(noisy.astype(np.float64), sigma=level, rician=True, method="classic")
        ours = den.denoise(noisy, affine=sample.affine, modality="MR")
        for name, image in (("noisy", noisy), ("classic NLM", nlm), (f"{args.model} default", ours)):
            psnr, ssim = _score(sample, image)
            print(f"{100 * level:.1f} %: {name} {psnr:.3f} / {ssim:.5f}", flush=True)


if __name__ == "__main__":
    main()
