"""Default denoising against DIPY's default NLM, timed warm in one process: the Colin27 brain or the chest CTA.

Usage: python benchmarks/cpu_speed.py [--level 9] [--repeats 2] [--data-dir DIR] [--modality CT]
       ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/cpu_speed.py   # as on a CPU without AMX
       ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_speed.py --precision fp32 --batch-sizes 1 2
           # as on a CPU without bf16 instructions, one and two windows per network call

The benchmark's Colin27 case at one noise level (its noise draw; with ``--modality CT`` its chest
CTA case, the level in HU) is denoised by DIPY's default NLM (as the benchmark runs it, given the
true sigma), by ``medidiff denoise``'s defaults, on MR also by the defaults with the previous
40x48x40 windows, and with each of ``--batch-sizes`` windows per network call, each ``--repeats``
times after one warm-up call of medidiff; the fastest of each is compared.
``--precision`` is passed on to every medidiff run. ``ONEDNN_MAX_CPU_ISA`` limits the instructions oneDNN
(PyTorch's CPU convolutions) uses, so an AMX machine can show roughly how the network runs without
AMX; it does not change NLM. docs/benchmarks.md (window size, CT speed) quotes the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path


def main() -> None:
    import torch

    from medidiff.benchmark import _nlmeans, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("--level", type=float, default=9.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--modality", default="MR", choices=["MR", "CT"])
    args = parser.parse_args()
    cfg = load_benchmark_config(Path(__file__).resolve().parents[1] / "configs/benchmark.yaml", data_dir=args.data_dir)
    cases = [dataclasses.replace(c, noise_levels=[args.level]) for c in cfg.cases]
    ct = args.modality == "CT"
    sample = make_samples(dataclasses.replace(cfg, cases=cases), modality=args.modality)[0]
    den = Denoiser(model=args.modality.lower(), device="cpu")
    volume = Volume.from_array(sample.noisy, sample.affine, modality=args.modality)
    precision = args.precision
    den.denoise_volume(volume, precision=precision)
    calls = {
        "DIPY NLM (default)": lambda: _nlmeans(sample.noisy, sample.sigma_true, ct, cfg.classical),
        "medidiff default": lambda: den.denoise_volume(volume, precision=precision),
    }
    if not ct:
        calls["medidiff, 40x48x40 windows"] = lambda: den.denoise_volume(
            volume, roi_size=(40, 48, 40), precision=precision
        )
    for b in args.batch_sizes:
        calls[f"medidiff, {b} windows per call"] = lambda b=b: den.denoise_volume(
            volume, precision=precision, batch_size=b
        )
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            runs[name].append(time.perf_counter() - t)
    nlm = min(runs["DIPY NLM (default)"])
    level = f"chest CTA {args.level:g} HU" if ct else f"Colin27 {args.level:g} %"
    print(f"{level}, {torch.get_num_threads()} threads, precision {precision}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(not set)')}")
    for name, times in runs.items():
        print(f"  {name}: {', '.join(f'{t:.2f}' for t in times)} s; fastest {min(times) / nlm:.2f}x NLM")


if __name__ == "__main__":
    main()
