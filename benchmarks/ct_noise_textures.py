"""The held-out chest CTA under three noise textures: how CT models fare on noise unlike their training.

Usage: python benchmarks/ct_noise_textures.py [--models ct RUN_OR_FILE ...] [--textures fbp white coarse]
       [--levels 25 50] [--true-sigma] [--anchors] [--data-dir DIR]

The benchmark's chest CTA case (configs/benchmark.yaml: same scan, body mask, HU window and
scoring) with noise of each level in HU:

* ``fbp``: the benchmark's own projection-domain low-dose simulation (``make_samples`` with the
  benchmark's seed, the CT case alone, so another draw than ``medidiff benchmark``'s; the level is
  the target, the realized std is printed);
* ``white``: image-domain white Gaussian noise (seeded by the level), a common simulation shortcut;
* ``coarse``: low-frequency in-plane grain (``add_ct_noise`` with a soft kernel and no ramp),
  like the blotchy texture of iterative reconstruction or of resampled scans (seeded by the level).

Each model runs medidiff's defaults (sigma estimated); ``--true-sigma`` adds a run of each given the
added noise's std, as the anchors are. With ``--anchors`` DIPY's classic NLM (the benchmark's CT
setting when these textures were measured) and BM4D (when the optional ``bm4d`` package is
installed) run too, given the realized noise std as the true sigma. docs/benchmarks.md quotes the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

import numpy as np
import torch


def main() -> None:
    from medidiff.benchmark import _bm4d, _nlmeans_classic, _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.noise import add_ct_noise
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["ct"])
    parser.add_argument("--textures", nargs="+", choices=["fbp", "white", "coarse"], default=["fbp", "white", "coarse"])
    parser.add_argument("--levels", type=float, nargs="+", default=[25.0, 50.0])
    parser.add_argument("--true-sigma", action="store_true")
    parser.add_argument("--anchors", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    cfg = load_benchmark_config(data_dir=args.data_dir)
    ct_cases = [c for c in cfg.cases if c.modality == "CT"]
    fbp = make_samples(dataclasses.replace(cfg, cases=[dataclasses.replace(ct_cases[0], noise_levels=args.levels)]))
    base = fbp[0]  # the clean scan, mask and geometry are the same for every level
    methods = {}
    for spec in args.models:
        den = Denoiser(model=spec, device="cpu")

        def run_medidiff(noisy: np.ndarray, s: float | None, den: Denoiser = den) -> tuple[np.ndarray, str]:
            result = den.denoise_volume(Volume.from_array(noisy, base.affine, modality="CT"), sigma=s)
            return result.volume.data[0], "" if s else f", sigma estimated {result.sigma:.4g}"

        methods[f"medidiff {spec}"] = lambda noisy, s, run=run_medidiff: run(noisy, None)
        if args.true_sigma:
            methods[f"medidiff {spec}, true sigma"] = run_medidiff
    if args.anchors:
        methods["DIPY NLM (classic)"] = lambda noisy, s: (_nlmeans_classic(noisy, s, True, cfg.classical), "")
        if importlib.util.find_spec("bm4d") is not None:
            methods["BM4D"] = lambda noisy, s: (
                np.asarray(_bm4d(noisy, s, True, cfg.classical), np.float32).reshape(noisy.shape),
                "",
            )
    print(f"{base.case.file}, shape {base.clean.shape}, {torch.get_num_threads()} torch threads")
    for texture in args.textures:
        for i, level in enumerate(args.levels):
            if texture == "fbp":
                noisy = fbp[i].noisy
            elif texture == "white":
                rng = np.random.default_rng([7, int(level)])
                noisy = (base.clean + rng.normal(0.0, level, base.clean.shape)).astype(np.float32)
            else:
                gen = torch.Generator().manual_seed(8000 + int(level))
                axial_last = np.moveaxis(np.zeros_like(base.clean), base.slice_axis, -1)  # slices in (X, Y)
                grain = add_ct_noise(torch.from_numpy(axial_last), 1.0, gen, smoothness=2.0, ramp=0.0).numpy()
                noisy = (base.clean + level * np.moveaxis(grain, -1, base.slice_axis)).astype(np.float32)
            # the anchors' true sigma: the benchmark's for its own draws, else the std over the body
            sigma = fbp[i].sigma_true if texture == "fbp" else float(np.std((noisy - base.clean)[base.mask]))
            sample = dataclasses.replace(base, level=level, noisy=noisy, sigma_true=sigma)
            psnr, ssim = _score(sample, noisy)
            print(f"{texture} {level:g} HU (std {sigma:.1f} HU): noisy {psnr:.2f} / {ssim:.4f}", flush=True)
            for name, run in methods.items():
                t = time.perf_counter()
                out, note = run(noisy, sigma)
                psnr, ssim = _score(sample, out)
                print(f"  {name}: {psnr:.2f} / {ssim:.4f}, {time.perf_counter() - t:.1f} s{note}", flush=True)


if __name__ == "__main__":
    main()
