"""DIPY's blockwise NLM against the extent of the volume (more zero background, worse result).

Usage: python benchmarks/nlm_blockwise_extent.py [--data-dir ../shared/data/reference]

Colin27 (scaled by its 99.9th percentile) with 5 % Rician noise (seed 5); centred crops of growing
size and the whole volume, each denoised with ``dipy.denoise.nlmeans.nlmeans(noisy, 0.05,
rician=True)`` (DIPY's default method) and with ``method="classic"``; foreground PSNR at peak 1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from dipy.denoise.nlmeans import nlmeans

    from medidiff import metrics
    from medidiff.io import read_volume
    from medidiff.noise import add_rician_numpy

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    args = parser.parse_args()
    clean = read_volume(str(Path(args.data_dir) / "colin27_ch2_T1_brain_1mm.nii.gz")).data[0].astype(np.float32)
    clean /= np.percentile(clean, 99.9)
    noisy = add_rician_numpy(clean, 0.05, np.random.default_rng(5))
    centre = [n // 2 for n in clean.shape]
    print("extent | noisy dB | blockwise dB (s) | classic dB (s)")
    for size in (80, 120, 160, None):
        if size is None:
            box = tuple(slice(None) for _ in clean.shape)
        else:
            box = tuple(slice(c - size // 2, c - size // 2 + size) for c in centre)
        x0, y = clean[box], noisy[box]
        mask = metrics.foreground_mask(x0, "MR", slice_axis=2)
        cells = [f"{metrics.psnr(x0, y, mask, data_range=1.0):.2f}"]
        for method in ("blockwise", "classic"):
            start = time.perf_counter()
            out = nlmeans(y, 0.05, rician=True, method=method)
            took = time.perf_counter() - start
            cells.append(f"{metrics.psnr(x0, out, mask, data_range=1.0):.2f} ({took:.1f})")
        print("x".join(map(str, x0.shape)), "|", " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
