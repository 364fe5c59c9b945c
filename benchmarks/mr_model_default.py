"""Compare MR models by the default output they give: the held-out Colin27 brain and the training scans.

Usage: python benchmarks/mr_model_default.py MODEL [MODEL ...] [--data-dir DIR]
       [--brain CONFIG DATA_DIR ...]

Each MODEL (``mr``, a run folder or an exported file) denoises, with ``medidiff denoise``'s
defaults (sigma estimated):

- the benchmark's Colin27 inputs at 3, 5 and 9 % (``make_samples`` on configs/benchmark.yaml: the
  noise draws of docs/benchmarks.md), scored as the benchmark scores them, for the default output
  and for the network alone (``guided_radius=0``);
- the two MR training scans recorrupted at 3, 5 and 9 % (the draws of ``guided_radius_grid.py``),
  scored against the recorrupted target with its noise taken out (PSNR as in
  ``guided_radius_grid.py``, SSIM as in ``network_sigma_scale.py``);
- with ``--brain CONFIG DATA_DIR`` (repeatable), the MR cases of another benchmark config (e.g.
  ``benchmarks/mr_mni152.yaml``, ``benchmarks/mr_phantom_head.yaml``) with its own noise draws,
  scored as the benchmark scores them, default output and network alone.

docs/model-card.md ("Tried after stage 4") quotes the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from guided_radius_grid import recorrupt, recorrupted_psnr
from mr_training_scans import training_scans
from network_sigma_scale import ssim_noisy_reference


def main() -> None:
    from medidiff.benchmark import _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    parser.add_argument("--brain", nargs=2, action="append", default=[], metavar=("CONFIG", "DATA_DIR"))
    args = parser.parse_args()
    cfg = load_benchmark_config(data_dir=args.data_dir)
    brains = make_samples(cfg, modality="MR")
    for config, data_dir in args.brain:
        extra = load_benchmark_config(config, data_dir=data_dir)
        brains += make_samples(extra, modality="MR")
    scans = list(training_scans(args.data_dir))
    for spec in args.models:
        den = Denoiser(model=spec, device="cpu")

        def run(y: np.ndarray, affine: np.ndarray, den: Denoiser = den, **options: float) -> np.ndarray:
            return den.denoise_volume(Volume.from_array(y, affine, modality="MR"), **options).volume.data[0]

        print(spec, flush=True)
        for sample in brains:
            default = _score(sample, run(sample.noisy, sample.affine))
            alone = _score(sample, run(sample.noisy, sample.affine, guided_radius=0))
            print(f"  {sample.case.name} {sample.level:g} %: default {default[0]:.3f} / {default[1]:.5f}, "
                  f"network alone {alone[0]:.3f} / {alone[1]:.5f}", flush=True)
        for name, r, mask in scans:
            own = estimate_sigma(r, "MR")
            for level in (3.0, 5.0, 9.0):
                y, target, target_var = recorrupt(r, own, level / 100, [11, int(level)])
                out = run(y, np.eye(4), sigma=estimate_sigma(y, "MR"))
                print(f"  {name} {level:g} % (recorrupted): {recorrupted_psnr(out, target, mask, target_var):.3f} / "
                      f"{ssim_noisy_reference(target, out, mask, target_var):.4f}", flush=True)


if __name__ == "__main__":
    main()
