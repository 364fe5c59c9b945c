"""Where an MR model gains or loses against DIPY's classic NLM over the whole Colin27 brain.

Usage: python benchmarks/mr_regions.py LEVEL MODEL [MODEL ...] [--data-dir DIR]

LEVEL is the Rician sigma as a fraction of the 99.9th percentile (0.03 = 3 %); noise seed 0. Each
MODEL (anything ``--model`` accepts) denoises the whole scan in one step given the true sigma
(the network alone, no guided averaging), fp32; classic NLM gets the true sigma too. PSNR (peak 1)
is reported over the benchmark's foreground mask and split into the brain eroded by 3 voxels and
the outer shell, with the mean and RMSE in the mask's voxels that are exactly zero in the
skull-stripped scan, and the RMSE by depth (distance to the outside of the brain, 1-6 voxels).
docs/design.md, section 8, quotes its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from dipy.denoise.nlmeans import nlmeans
    from scipy import ndimage

    from medidiff import metrics
    from medidiff.inference import Denoiser
    from medidiff.io import read_volume
    from medidiff.noise import add_rician_numpy
    from medidiff.volume import Volume

    parser = argparse.ArgumentParser()
    parser.add_argument("level", type=float)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    args = parser.parse_args()
    x = read_volume(str(Path(args.data_dir) / "colin27_ch2_T1_brain_1mm.nii.gz")).data[0].astype(np.float32)
    x /= np.percentile(x, 99.9)
    s = args.level
    y = add_rician_numpy(x, s, np.random.default_rng(0))
    outs = {
        spec: Denoiser(model=spec)
        .denoise_volume(
            Volume.from_array(y, np.eye(4)), modality="MR", sigma=s, steps=1, precision="fp32", guided_radius=0,
            network_sigma_scale=1.0,  # the model itself, at the given sigma
        )
        .volume.data[0]
        for spec in args.models
    }
    outs["DIPY NLM classic"] = nlmeans(y, s, patch_radius=1, rician=True, method="classic")
    mask = metrics.foreground_mask(x, "MR", slice_axis=2)
    brain = x > 0
    inner = mask & ndimage.binary_erosion(brain, iterations=3)
    regions = {"mask": mask, "interior": inner, "shell": mask & ~inner}
    zero = mask & ~brain
    depth = ndimage.distance_transform_edt(brain)
    for name, out in outs.items():
        err = out - x
        psnr = {k: round(metrics.psnr(x, out, r, data_range=1.0), 2) for k, r in regions.items()}
        rmse = [float(np.sqrt(np.mean(err[mask & (depth > k - 1) & (depth <= k)] ** 2))) for k in range(1, 7)]
        print(f"{name}: PSNR {psnr}; zero voxels in the mask: mean {out[zero].mean():.4f}, "
              f"RMSE {np.sqrt(np.mean(err[zero] ** 2)):.4f}; RMSE by depth {[round(v, 4) for v in rmse]}")


if __name__ == "__main__":
    main()
