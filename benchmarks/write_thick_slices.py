"""Write thick-slice versions of two held-out reference scans, for benchmarking on anisotropic voxels.

Usage: python benchmarks/write_thick_slices.py OUT_DIR [--data-dir DIR]

Clinical scans are often acquired with slices thicker than their in-plane pixels. Each thick slice
here is the mean of consecutive thin slices along the scan's axial axis (a box slice profile), so
the partial-volume blur of a thick slice comes with it:

- ``colin27_t1_1x1x3mm.nii.gz``: the Colin27 T1 brain (1 mm) in 3 mm axial slices (181x217x60);
- ``chest_cta_1p5x1p5x3mm.nii.gz``: the chest CTA (1.5 mm) in 3 mm axial slices (120x126x82).

The affine keeps the in-plane geometry and puts each thick slice at the centre of the thin slices
it averages. benchmarks/thick_slices.yaml adds the noise and runs the comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from medidiff.metrics import axial_axis

SCANS = (  # (reference file, output file, thin slices per thick slice)
    ("colin27_ch2_T1_brain_1mm.nii.gz", "colin27_t1_1x1x3mm.nii.gz", 3),
    ("totalseg_chest_cta_crop_1p5mm.nii.gz", "chest_cta_1p5x1p5x3mm.nii.gz", 2),
)


def thick_slices(data: np.ndarray, affine: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``n`` consecutive slices along the axial axis, and the affine of the result."""
    axis = axial_axis(affine)  # the voxel axis closest to superior-inferior, as the benchmark finds it
    count = data.shape[axis] // n
    moved = np.moveaxis(data.astype(np.float32), axis, 0)[: count * n]
    thick = np.moveaxis(moved.reshape(count, n, *moved.shape[1:]).mean(axis=1), 0, axis)
    out = affine.copy()
    out[:3, axis] = affine[:3, axis] * n
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * (n - 1) / 2.0  # the centre of the first n thin slices
    return thick, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name, out_name, n in SCANS:
        img = nib.load(str(Path(args.data_dir) / name))
        thick, affine = thick_slices(np.asarray(img.dataobj), img.affine, n)
        nib.save(nib.Nifti1Image(thick, affine), str(Path(args.out) / out_name))
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        print(f"wrote {out_name}: {thick.shape}, {' x '.join(f'{v:g}' for v in spacing)} mm")


if __name__ == "__main__":
    main()
