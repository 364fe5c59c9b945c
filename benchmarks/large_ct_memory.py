"""Peak memory and wall time of `medidiff denoise` on a 512x512x400 CT with default settings.

Usage: python benchmarks/large_ct_memory.py [--shape 512 512 400] [--keep DIR]

A synthetic CT of that size (an elliptic body of soft tissue at 40 HU with fat, bone and lung
regions, air outside, white noise of 50 HU; 0.7 x 0.7 x 1.25 mm voxels) is written as NIfTI
(int16 HU) to a temporary folder, and the real command, `medidiff denoise IN -o OUT`, runs on it in
a child process. The child's peak resident memory (``resource.getrusage(RUSAGE_CHILDREN)``) and
wall time are printed with the sidecar's sigma, box and window counts. The issue this answers: a
512x512x400 CT must not run out of memory on a 24 GB machine. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An elliptic body in air: soft tissue, a fat rim, two lungs and a spine, plus 50 HU of noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    inner = (x / 0.78) ** 2 + (y / 0.58) ** 2 < 1
    lungs = (((x - 0.35) / 0.28) ** 2 + (y / 0.4) ** 2 < 1) | (((x + 0.35) / 0.28) ** 2 + (y / 0.4) ** 2 < 1)
    spine = (x / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 < 1
    plane = np.full(shape[:2], -1000.0, np.float32)
    plane[body] = -100.0  # fat
    plane[inner] = 40.0  # soft tissue
    plane[lungs & inner] = -850.0
    plane[spine] = 700.0
    vol = np.repeat(plane[:, :, None], shape[2], axis=2)
    vol += rng.normal(0.0, 50.0, shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def main() -> None:
    import nibabel as nib

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--keep", default=None, help="write the scans here instead of a temporary folder")
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src, out = folder / "large_ct.nii.gz", folder / "large_ct_denoised.nii.gz"
        nib.save(nib.Nifti1Image(synthetic_ct(shape), np.diag([0.7, 0.7, 1.25, 1.0])), src)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "medidiff", "denoise", str(src), "-o", str(out), "--force"],
            capture_output=True, text=True, check=False,
        )
        wall = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
        print(f"shape {shape}: exit {done.returncode}, wall {wall:.1f} s, peak resident memory {peak_mib:.0f} MiB")
        if done.returncode:
            print(done.stderr.strip())
            raise SystemExit(1)
        sidecar = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
        keys = ("sigma", "steps", "guided_radius", "blend", "box", "windows", "skipped_windows", "device", "precision")
        print({k: sidecar.get(k) for k in keys})


if __name__ == "__main__":
    main()
