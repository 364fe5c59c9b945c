"""Write a synthetic head phantom as NIfTI, for benchmarking on a whole head with flat tissue.

Usage: python benchmarks/write_phantom.py OUT.nii.gz [--shape 181 217 181] [--contrast T1] [--seed 7001]
       [--spacing 1.0]

medidiff.phantom.head_phantom: scalp, skull, CSF, grey and white matter, ventricles and lesions,
piecewise constant up to a smooth bias field and a 2 % texture, zero background around the head,
like BrainWeb's simulated brains; ``--contrast CT`` writes the same anatomy in Hounsfield units (air
-1000 around the head, bone about 1200, brain 27-38 HU, a bleed at 65 HU, blurred by a point spread of
half a voxel). The training phantoms
(``data.synthetic_phantoms``) use seeds 1000 and up and the demo seed 0, so the default seed draws a
head no model has seen. The clean volume is written as float32 with a RAS affine; benchmarks/mr_phantom_head.yaml and
benchmarks/ct_phantom_head.yaml add the noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from medidiff.phantom import head_phantom, phantom_affine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--shape", type=int, nargs=3, default=[181, 217, 181])
    parser.add_argument("--contrast", choices=["T1", "T2", "CT"], default="T1")
    parser.add_argument("--seed", type=int, default=7001)
    parser.add_argument("--spacing", type=float, default=1.0)
    args = parser.parse_args()
    shape = tuple(args.shape)
    clean = head_phantom(shape, args.contrast, seed=args.seed)  # type: ignore[arg-type]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(clean.astype(np.float32), phantom_affine(shape, args.spacing)), args.out)
    print(f"wrote {args.out}: {args.contrast} head phantom {shape}, seed {args.seed}, {args.spacing} mm")


if __name__ == "__main__":
    main()
