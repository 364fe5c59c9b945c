"""Window size and overlap of the sliding-window inference: quality and time on the whole Colin27 brain.

Usage: python benchmarks/window_size.py [--model MODEL] [--levels 3 9] [--threads N] [--data-dir DIR]

The benchmark's MR case (Colin27, Rician noise at each level in % of the 99.9th percentile, the
benchmark's noise seed and scoring: foreground PSNR at peak 1 and SSIM) is denoised with default
settings (sigma estimated, one step, bf16 where the CPU has it) and each window setting below,
without the guided averaging (``--guided-radius 0``): the windows shape the network's estimate.
Prints a markdown table: PSNR / SSIM, wall seconds of the call, windows computed and skipped.
Wall times are those of one call on this machine; run it on a quiet machine to compare them.
docs/design.md (section 6, window size) and docs/benchmarks.md quote its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

SETTINGS: list[tuple[str, dict]] = [
    ("default (fitted for the least work around base 40, overlap 0.2 = 8 voxels)", {}),
    ("40x48x40, 8 voxels (the previous default)", {"roi_size": (40, 48, 40)}),
    ("72x64x72, 8 voxels (the earlier default size)", {"roi_size": (72, 64, 72)}),
    ("56^3, 8 voxels", {"roi_size": (56, 56, 56)}),
    ("48^3, 8 voxels", {"roi_size": (48, 48, 48)}),
    ("32^3, 8 voxels", {"roi_size": (32, 32, 32)}),
    ("32^3, 4 voxels", {"roi_size": (32, 32, 32), "overlap": 0.1}),
]


def main() -> None:
    import torch

    from medidiff.benchmark import _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.volume import Volume

    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--levels", type=float, nargs="+", default=[3.0, 9.0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_benchmark_config(root / "configs/benchmark.yaml", data_dir=args.data_dir)
    cases = [
        dataclasses.replace(c, noise_levels=[v for v in c.noise_levels if v in args.levels])
        for c in cfg.cases
        if c.modality == "MR"
    ]
    samples = make_samples(dataclasses.replace(cfg, cases=cases))
    den = Denoiser(model=args.model, device="cpu")
    warm = samples[0]
    den.denoise_volume(Volume.from_array(warm.noisy[:48, :48, :48], modality="MR"), modality="MR")
    print(f"model {args.model or 'bundled mr'}, {torch.get_num_threads()} threads")
    print("| windows | " + " | ".join(f"{s.level:g} %: PSNR / SSIM, time, windows (skipped)" for s in samples) + " |")
    print("|---|" + "---|" * len(samples))
    for label, options in SETTINGS:
        cells = []
        for s in samples:
            vol = Volume.from_array(s.noisy, s.affine, modality="MR")
            t = time.perf_counter()
            result = den.denoise_volume(vol, modality="MR", seed=cfg.seed, guided_radius=0,
                                     network_sigma_scale=1.0, **options)
            wall = time.perf_counter() - t
            psnr, ssim = _score(s, result.volume.data[0])
            info = result.info
            cells.append(
                f"{psnr:.2f} / {ssim:.4f}, {wall:.1f} s, {info['windows']} ({info['skipped_windows']}) "
                f"of {'x'.join(map(str, info['roi_size']))}"
            )
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
