"""The GPU measurements in one run: denoising time and memory, share of the bf16 peak, bf16 vs fp32.

Usage: python benchmarks/gpu_check.py [--scan PATH] [--peak-tflops 989] [--repeats 5] [--flips 1 8]
       [--shape X Y Z] [--device cuda] [--output FILE.json]

The scan (default: a synthetic 181x217x181 head phantom, the size of the benchmark brain; give
``--scan`` a copy of ``colin27_ch2_T1_brain_1mm.nii.gz`` for the benchmark's own volume) gets 5 %
Rician noise (seed 0) and is denoised with the bundled MR model and default settings, in bf16 and in
fp32, ``--repeats`` times each after one warm-up run; the median wall time is reported with the peak
GPU memory. The U-Net's FLOPs are counted on one window (``torch.utils.flop_counter``) and multiplied
by the windows that went through the network, so "share of peak" = FLOPs / time / ``--peak-tflops``
(dense bf16 peak of the card: 989 TFLOP/s for an H100 or H200 SXM). bf16 and fp32 outputs are compared
with each other and with the clean scan (foreground PSNR, peak 1). ``--flips`` times the mirror average
as well. Prints one JSON object and writes it to ``--output``. Runs on the CPU too (``--device cpu``,
a small ``--shape``), which is how it is tested; the numbers that count come from a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def _timed(fn, device) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def window_flops(loaded, roi: list[int], device, precision: str) -> int:  # type: ignore[no-untyped-def]
    """FLOPs of one denoiser call on one window (a multiply-add counts as 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, 1, *roi), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loaded.denoiser(x, 0.05)
    return int(counter.get_total_flops())


def main() -> None:
    import torch

    from medidiff import metrics
    from medidiff.inference import Denoiser
    from medidiff.io import read_volume
    from medidiff.noise import add_rician_numpy
    from medidiff.phantom import head_phantom
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=[181, 217, 181])
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flips", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    if args.scan:
        clean = read_volume(args.scan).data[0].astype(np.float32)
        source = Path(args.scan).name
    else:
        clean = head_phantom(tuple(args.shape))
        source = f"head_phantom{tuple(args.shape)}"
    clean = clean / np.percentile(clean, 99.9)
    noisy = add_rician_numpy(clean, 0.05, np.random.default_rng(0))
    volume = Volume.from_array(noisy, np.eye(4), modality="MR")
    mask = metrics.foreground_mask(clean, "MR", slice_axis=2)
    den = Denoiser(device=args.device)
    device = den.device
    report: dict[str, object] = {
        "scan": source,
        "shape": list(clean.shape),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "peak_tflops_assumed": args.peak_tflops,
        "runs": [],
    }
    outputs = {}
    for flips in args.flips:
        for precision in ("bf16", "fp32"):
            def run(precision=precision, flips=flips):  # type: ignore[no-untyped-def]
                return den.denoise_volume(volume, modality="MR", precision=precision, flips=flips)

            run()  # warm-up: model load, kernel selection
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times, result = [], None
            for _ in range(args.repeats):
                seconds, result = _timed(run, device)
                times.append(seconds)
            assert result is not None
            info = result.info  # type: ignore[attr-defined]
            out = np.asarray(result.volume.data[0])  # type: ignore[attr-defined]
            outputs[(flips, precision)] = out
            loaded = den._model_for("MR")
            calls = (info["windows"] - info["skipped_windows"]) * info["steps"]
            flops = window_flops(loaded, info["roi_size"], device, precision) * calls
            median = statistics.median(times)
            row = {
                "flips": flips,
                "precision": precision,
                "median_s": round(median, 4),
                "times_s": [round(t, 4) for t in times],
                "psnr_db": round(metrics.psnr(clean, out, mask, data_range=1.0), 3),
                "windows_through_network": calls,  # windows x steps, batched into fewer calls
                "tflop": round(flops / 1e12, 3),
                "achieved_tflops": round(flops / median / 1e12, 2),
                "share_of_peak": round(flops / median / 1e12 / args.peak_tflops, 4),
                "roi_size": info["roi_size"],
            }
            if device.type == "cuda":
                row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            report["runs"].append(row)  # type: ignore[attr-defined]
            print(json.dumps(row), flush=True)
        bf16, fp32 = outputs[(flips, "bf16")], outputs[(flips, "fp32")]
        report[f"bf16_vs_fp32_flips{flips}"] = {
            "max_abs_diff": float(np.abs(bf16 - fp32).max()),
            "psnr_between_db": round(metrics.psnr(fp32, bf16, mask, data_range=1.0), 2),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
