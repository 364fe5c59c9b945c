"""Compare MR models (and optionally the classical anchors) on a held-out Colin27 crop.

Usage: python benchmarks/mr_model_crops.py MODEL [MODEL ...] [--anchors] [--crop central|superior]
       [--data-dir DIR]

MODEL is anything ``--model`` accepts (``mr``, a run folder, a .safetensors file). Colin27 is
scaled by its 99.9th percentile; an 80^3 crop gets Rician noise at 3, 5 and 9 % (seed 1); each
model denoises it in one step given the true sigma, fp32, without the guided
averaging (the network alone). Scores: PSNR at peak 1 and SSIM.

* ``--crop central`` (the default): the centred crop, all brain, scored over voxels above 0.1.
* ``--crop superior``: moved 40 voxels up, so that a third of it lies outside the skull-stripped
  brain and the cortex ends at a hard edge to zero (docs/design.md, section 8); scored over the
  benchmark's foreground mask, which takes in the zeros between gyri.

``--anchors`` adds BM4D (if installed) and DIPY's classic NLM, both given the true sigma. This is
how the bundled MR model was chosen among fine-tuning runs (docs/model-card.md); the full-volume
comparison is ``medidiff benchmark``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

LEVELS = (0.03, 0.05, 0.09)


def main() -> None:
    from medidiff import metrics
    from medidiff.inference import Denoiser
    from medidiff.io import read_volume
    from medidiff.noise import add_rician_numpy
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--anchors", action="store_true")
    parser.add_argument("--crop", choices=("central", "superior"), default="central")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    args = parser.parse_args()
    full = read_volume(str(Path(args.data_dir) / "colin27_ch2_T1_brain_1mm.nii.gz")).data[0].astype(np.float32)
    full /= np.percentile(full, 99.9)
    c = [s // 2 for s in full.shape]
    z = c[2] + (40 if args.crop == "superior" else 0)
    box = (slice(c[0] - 40, c[0] + 40), slice(c[1] - 40, c[1] + 40), slice(z - 40, z + 40))
    clean = full[box]
    # superior: the benchmark's mask, which takes in the zeros between gyri
    mask = metrics.foreground_mask(full, "MR", slice_axis=2)[box] if args.crop == "superior" else clean > 0.1
    noisy = {s: add_rician_numpy(clean, s, np.random.default_rng(1)) for s in LEVELS}

    def row(name: str, denoise) -> None:  # type: ignore[no-untyped-def]
        cells, start = [], time.perf_counter()
        for s in LEVELS:
            out = denoise(noisy[s], s)
            p = metrics.psnr(clean, out, mask, data_range=1.0)
            q = metrics.ssim(clean, out, mask, data_range=1.0)
            cells.append(f"{p:.2f} / {q:.4f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} |", flush=True)

    print("| method | 3 % PSNR / SSIM | 5 % | 9 % | time s (3 levels) |")
    print("|---|---|---|---|---|")
    row("noisy", lambda y, s: y)
    for spec in args.models:
        den = Denoiser(model=spec)
        row(spec, lambda y, s, den=den: den.denoise_volume(
            Volume.from_array(y, np.eye(4)), modality="MR", sigma=s, steps=1, precision="fp32", guided_radius=0,
            network_sigma_scale=1.0,  # the model itself, at the given sigma
        ).volume.data[0])
    if args.anchors:
        from dipy.denoise.nlmeans import nlmeans

        row("DIPY NLM classic", lambda y, s: nlmeans(y, sigma=s, rician=True, method="classic"))
        try:
            import bm4d
        except ImportError:
            print("(bm4d not installed: no BM4D row)")
        else:
            row("BM4D", lambda y, s: np.asarray(bm4d.bm4d(y, s), dtype=np.float32))


if __name__ == "__main__":
    main()
