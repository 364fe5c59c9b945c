"""The held-out chest CTA with image-domain white Gaussian noise instead of the benchmark's
projection-domain (FBP-textured) noise: how the CT default fares on noise it was not trained on.

Usage: python benchmarks/ct_white_noise.py [--levels 50 25] [--no-bm4d] [--data-dir DIR]

The benchmark's chest CTA case (configs/benchmark.yaml: same scan, body mask, HU window and
scoring) gets white Gaussian noise of each level in HU (seed 7). medidiff runs its defaults (sigma
estimated); DIPY's classic NLM (the benchmark's CT setting) and BM4D (when the optional ``bm4d``
package is installed) get the level as the true sigma. The CT model was trained with FBP-like
in-plane correlated noise only (docs/model-card.md). docs/benchmarks.md quotes the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import numpy as np


def main() -> None:
    from medidiff.benchmark import _bm4d, _nlmeans, _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", type=float, nargs="+", default=[50.0, 25.0])
    parser.add_argument("--no-bm4d", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    cfg = load_benchmark_config(data_dir=args.data_dir)
    cases = [dataclasses.replace(c, noise_levels=[50.0]) for c in cfg.cases if c.modality == "CT"]
    base = make_samples(dataclasses.replace(cfg, cases=cases))[0]  # the clean scan, mask and geometry
    den = Denoiser(model="ct", device="cpu")
    methods = {
        "medidiff (default)": lambda noisy, s: den.denoise_volume(
            Volume.from_array(noisy, base.affine, modality="CT")
        ).volume.data[0],
        "DIPY NLM (classic)": lambda noisy, s: _nlmeans(noisy, s, True, cfg.classical),
    }
    if not args.no_bm4d and importlib.util.find_spec("bm4d") is not None:
        methods["BM4D"] = lambda noisy, s: np.asarray(_bm4d(noisy, s, True, cfg.classical), np.float32).reshape(
            noisy.shape
        )
    print(f"{base.case.file}, shape {base.clean.shape}, white Gaussian noise")
    for level in args.levels:
        rng = np.random.default_rng([7, int(level)])
        noisy = (base.clean + rng.normal(0.0, level, base.clean.shape)).astype(np.float32)
        sample = dataclasses.replace(base, level=level, noisy=noisy, sigma_true=level)
        psnr, ssim = _score(sample, noisy)
        print(f"{level:g} HU: noisy {psnr:.2f} / {ssim:.4f}", flush=True)
        for name, run in methods.items():
            t = time.perf_counter()
            out = run(noisy, level)
            psnr, ssim = _score(sample, out)
            print(f"  {name}: {psnr:.2f} / {ssim:.4f}, {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
