"""Brain MRI whose reference carries noise of its own, as a single real acquisition does.

Usage: python benchmarks/mr_reference_noise.py [--reference-noise 2] [--levels 3 5 9] [--crop 128 128 128]
       [--seed 11] [--models mr FILE ...] [--anchors] [--data-dir DIR]

The held-out Colin27 T1 brain (an average of 27 scans: its own noise is about 0.4 % of its 99.9th
percentile) is scaled to [0, 1] by that percentile and cropped around the centre of its foreground.
Rician noise at ``--reference-noise`` % makes the reference, as a single 1 mm acquisition would
be; Rician noise at each of ``--levels`` % on top of it makes the test input. medidiff's default
(for each of ``--models``) estimates sigma from the input, so it sees the total; with ``--anchors``
DIPY's NLM (its default blockwise method and the classic one) and BM4D (if installed) get the sigma
of the added noise only, as the benchmark gives them the true sigma. Foreground PSNR / SSIM (peak
1) against the noisy reference, with the mask of the clean crop, as the benchmark scores MR.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medidiff import metrics
from medidiff.benchmark import ClassicalSettings, _bm4d, _crop_box, _nlmeans, _nlmeans_classic
from medidiff.inference import Denoiser
from medidiff.noise import add_rician_numpy
from medidiff.volume import Volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"
COLIN27 = "colin27_ch2_T1_brain_1mm.nii.gz"


def draws(
    clean: np.ndarray, reference_noise: float, levels: list[float], seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The noisy reference (Rician, ``reference_noise`` % on ``clean``) and one input per level (% more on it)."""
    rng = np.random.default_rng(seed)
    reference = add_rician_numpy(clean, reference_noise / 100.0, rng).astype(np.float32)
    return reference, [add_rician_numpy(reference, level / 100.0, rng).astype(np.float32) for level in levels]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference-noise", type=float, default=2.0, help="% of the 99.9th percentile")
    parser.add_argument("--levels", type=float, nargs="+", default=[3.0, 5.0, 9.0])
    parser.add_argument("--crop", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--models", nargs="+", default=["mr"])
    parser.add_argument("--anchors", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    args = parser.parse_args()

    img = nib.load(str(args.data_dir / COLIN27))
    clean = np.asarray(img.dataobj, dtype=np.float32)
    clean = clean / float(np.percentile(clean, 99.9))
    axis = metrics.axial_axis(img.affine)
    clean = clean[_crop_box(metrics.foreground_mask(clean, "MR", slice_axis=axis), args.crop)]
    mask = metrics.foreground_mask(clean, "MR", slice_axis=axis)
    reference, inputs = draws(clean, args.reference_noise, args.levels, args.seed)
    print(f"Colin27 crop {clean.shape}, reference noise {args.reference_noise:g} %, seed {args.seed}")

    def score(name: str, image: np.ndarray, seconds: float) -> None:
        psnr = metrics.psnr(reference, image, mask, data_range=1.0)
        ssim = metrics.ssim(reference, image, mask, data_range=1.0)
        print(f"  {name}: {psnr:.2f} dB / {ssim:.4f} ({seconds:.1f} s)", flush=True)

    denoisers = {model: Denoiser(model=model, device="cpu") for model in args.models}
    for level, noisy in zip(args.levels, inputs, strict=True):
        print(f"{level:g} % added")
        score("noisy", noisy, 0.0)
        volume = Volume.from_array(noisy, img.affine, modality="MR")
        for model, den in denoisers.items():
            start = time.perf_counter()
            out = den.denoise_volume(volume)
            score(f"medidiff {model} (sigma est {100 * float(out.sigma):.2f} %)", out.volume.data[0],
                  time.perf_counter() - start)
            start = time.perf_counter()
            out = den.denoise_volume(volume, sigma=level / 100.0)
            score(f"medidiff {model}, told the added sigma", out.volume.data[0], time.perf_counter() - start)
        if args.anchors:
            settings = ClassicalSettings()
            methods = [("DIPY NLM blockwise", _nlmeans), ("DIPY NLM classic", _nlmeans_classic), ("BM4D", _bm4d)]
            for name, method in methods:
                start = time.perf_counter()
                try:
                    out_image = method(noisy, level / 100.0, False, settings)
                except ImportError:
                    print(f"  {name}: not installed")
                    continue
                score(name, np.asarray(out_image, np.float32), time.perf_counter() - start)


if __name__ == "__main__":
    main()
