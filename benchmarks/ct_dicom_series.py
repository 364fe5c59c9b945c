"""A low-dose CT series as a scanner writes it, through the real command: DICOM in, NIfTI out.

Usage:
    python benchmarks/ct_dicom_series.py SCAN OUT_DIR [--level 50] [--reference-noise 15] [--canvas 512]
                                         [--slices N] [--seed 5] [--classic] [--bm4d]
                                         [--also "--sigma 27.2" "--network-sigma-scale 1" ...]

SCAN is a CT NIfTI in HU, e.g. the 0.75 mm chest that ``benchmarks/fine_voxels.py write`` makes. Its
middle ``--slices`` axial slices (all by default) become the reference after a first projection-domain
low-dose simulation at ``--reference-noise`` HU (a real full-dose series carries noise of its own);
``--level`` HU are simulated on top of that for the test series. Both are placed in the middle of a
``--canvas`` x ``--canvas`` matrix of air (with white noise of the level measured in the simulated air)
and everything outside the reconstruction circle is set to -3024 HU, GE's padding. The test series is
written as a DICOM folder the way CT scanners store it: one file per slice, int16 with rescale intercept
-1024, ``PixelPaddingValue``, axial slices listed from head to feet.

Then, each as a separate process timed with ``/usr/bin/time`` (wall seconds, peak resident memory):
``medidiff denoise DICOM_DIR -o OUT.nii.gz`` with its defaults, and a script that reads the same folder
with ``medidiff.read_volume``, runs DIPY's NLM (its default blockwise method, and with ``--classic`` the
classic one) given the sigma of the added noise, as ``medidiff benchmark`` runs it, and writes NIfTI.
Each ``--also`` string is a further ``medidiff denoise`` run with those options added, scored the
same way. With ``--bm4d`` (if installed) BM4D, given the same sigma, runs in this process on the box around the
body only (on the whole canvas it would need about 40 GB); its time is of that box.
Prints foreground PSNR / SSIM (HU window [-1000, 1000], range 2000, the body mask of the reference) of
each, and checks medidiff's output against SimpleITK's reading of the series: same shape, same affine
(SimpleITK's LPS geometry converted to RAS, within 1e-5 mm), the padding back unchanged.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from fine_voxels import _score  # the same HU window, range and masked PSNR / SSIM as the fine-voxel probes

from medidiff import metrics
from medidiff.batch import sidecar_path
from medidiff.ct_dose import simulate_low_dose

PADDING_HU = -3024
INTERCEPT = -1024
NLM_SCRIPT = """
import sys, numpy as np
from medidiff import read_volume, write_volume
from medidiff.benchmark import _nlmeans, _nlmeans_classic
from medidiff.benchmark import ClassicalSettings
volume = read_volume(sys.argv[1])
method = _nlmeans_classic if sys.argv[4] == "classic" else _nlmeans
out = method(volume.data[0], float(sys.argv[3]), True, ClassicalSettings())
write_volume(volume.with_data(out[None].astype(np.float32)), sys.argv[2])
"""


def _middle_slices(data: np.ndarray, n: int | None) -> np.ndarray:
    if n is None or n >= data.shape[2]:
        return data
    start = (data.shape[2] - n) // 2
    return data[:, :, start : start + n]


def make_series(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float, float]]:
    """(reference, noisy, sigma of the added noise, spacing), both on the canvas, in HU."""
    img = nib.load(args.scan)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    x = _middle_slices(np.asarray(img.dataobj, dtype=np.float32), args.slices)
    rng = np.random.default_rng(args.seed)
    reference = x
    if args.reference_noise > 0:
        reference = simulate_low_dose(x, spacing, rng, target_std_hu=args.reference_noise, axis=2).noisy
    result = simulate_low_dose(reference, spacing, rng, target_std_hu=args.level, axis=2)
    air = x < -950
    ref_air = float(np.std((reference - x)[air])) if air.any() else 0.0
    added_air = float(np.std((result.noisy - reference)[air])) if air.any() else 0.0
    n = args.canvas
    if n < max(x.shape[:2]):
        raise SystemExit(f"--canvas {n} is smaller than the scan's slices {x.shape[:2]}")
    canvas_ref = -1000.0 + rng.normal(0.0, ref_air, (n, n, x.shape[2])).astype(np.float32)
    canvas_noisy = canvas_ref + rng.normal(0.0, added_air, canvas_ref.shape).astype(np.float32)
    ox, oy = (n - x.shape[0]) // 2, (n - x.shape[1]) // 2
    canvas_ref[ox : ox + x.shape[0], oy : oy + x.shape[1]] = reference
    canvas_noisy[ox : ox + x.shape[0], oy : oy + x.shape[1]] = result.noisy
    ii, jj = np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2, indexing="ij")
    outside = (ii**2 + jj**2) > (n / 2) ** 2
    canvas_ref[outside] = PADDING_HU
    canvas_noisy[outside] = PADDING_HU
    noisy = np.clip(np.rint(canvas_noisy), PADDING_HU, 32767 + INTERCEPT)  # integer HU, as stored
    return canvas_ref, noisy.astype(np.float32), result.noise_std_hu, spacing  # type: ignore[return-value]


def write_dicom(noisy: np.ndarray, spacing: tuple[float, float, float], folder: Path) -> None:
    """One int16 file per axial slice: columns along +x (patient left), rows along +y (posterior)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=False)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    nz = noisy.shape[2]
    for k in range(nz):  # slice k at z = k * dz (LPS): files written from the top slice down
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{nz - k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, nz - k
        ds.SeriesDescription = "low-dose simulation"
        ds.PatientName, ds.PatientID = "Phantom^Chest", "medidiff-benchmark"
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [-(noisy.shape[0] - 1) / 2 * spacing[0], -(noisy.shape[1] - 1) / 2 * spacing[1],
                                   k * spacing[2]]  # fmt: skip
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (along y), column spacing (along x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = noisy.shape[1], noisy.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1, "HU"
        ds.PixelPaddingValue = PADDING_HU - INTERCEPT
        stored = (noisy[:, :, k].T - INTERCEPT).astype(np.int16)  # (rows, columns)
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        ds.save_as(folder / f"IM{nz - k:04d}.dcm", enforce_file_format=True)


def timed(command: list[str]) -> tuple[float, float]:
    """Run ``command``; (wall s, peak resident MiB) from /usr/bin/time. Exits if it fails."""
    run = subprocess.run(["/usr/bin/time", "-f", "TIMED %e %M", *command], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    wall, kib = run.stderr.strip().splitlines()[-1].split()[1:]
    return float(wall), float(kib) / 1024


def sitk_affine_ras(folder: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """The series' (X, Y, Z) shape and voxel-to-RAS affine as SimpleITK reads it."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return tuple(image.GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--level", type=float, default=50.0)
    parser.add_argument("--reference-noise", type=float, default=15.0)
    parser.add_argument("--canvas", type=int, default=512)
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--classic", action="store_true", help="also DIPY's classic NLM (slow)")
    parser.add_argument("--bm4d", action="store_true", help="also BM4D on the box around the body (slow)")
    parser.add_argument("--also", nargs="*", default=[], metavar="OPTIONS",
                        help="further medidiff denoise runs, each with these options added (one quoted string each)")
    args = parser.parse_args()

    args.out_dir.mkdir(parents=True, exist_ok=False)
    reference, noisy, sigma, spacing = make_series(args)
    dicom_dir = args.out_dir / "noisy_dicom"
    write_dicom(noisy, spacing, dicom_dir)
    print(f"{args.scan.name}: {noisy.shape} at {spacing} mm, reference noise {args.reference_noise:g} HU, "
          f"added {sigma:.1f} HU; DICOM series in {dicom_dir}")  # fmt: skip

    inside = reference > PADDING_HU
    mask = metrics.foreground_mask(np.where(inside, reference, -1000.0), "CT", slice_axis=2) & inside

    def score(path_or_image: Path | np.ndarray) -> str:
        image = np.asarray(nib.load(path_or_image).dataobj) if isinstance(path_or_image, Path) else path_or_image
        return _score(reference, image, mask)

    shape, affine = sitk_affine_ras(dicom_dir)
    print(f"noisy: {score(noisy)}")
    out = args.out_dir / "medidiff.nii.gz"
    medidiff_wall, mib = timed(["medidiff", "denoise", str(dicom_dir), "-o", str(out)])
    img = nib.load(out)
    data = np.asarray(img.dataobj, dtype=np.float32)
    sidecar = json.loads(sidecar_path(out).read_text()) if sidecar_path(out).exists() else {}
    same_affine = np.allclose(img.affine, affine, rtol=0, atol=1e-5)  # NIfTI stores the sform in float32
    padding_back = bool(np.array_equal(data[~inside], noisy[~inside]))
    print(f"medidiff default: {score(data)}, {medidiff_wall:.1f} s, {mib:.0f} MiB; shape {img.shape} "
          f"(SimpleITK {shape}), affine {'equal' if same_affine else 'DIFFERENT'}, padding "
          f"{'unchanged' if padding_back else 'CHANGED'}, sigma est {sidecar.get('sigma', 'n/a')}")  # fmt: skip
    for k, extra in enumerate(args.also):
        path = args.out_dir / f"medidiff_also{k}.nii.gz"
        wall, mib = timed(["medidiff", "denoise", str(dicom_dir), "-o", str(path), *shlex.split(extra)])
        print(f"medidiff {extra}: {score(path)}, "
              f"{wall:.1f} s, {mib:.0f} MiB")  # fmt: skip
    methods = ["blockwise"] + (["classic"] if args.classic else [])
    for method in methods:
        path = args.out_dir / f"nlm_{method}.nii.gz"
        wall, mib = timed([sys.executable, "-c", NLM_SCRIPT, str(dicom_dir), str(path), str(sigma), method])
        print(f"DIPY NLM ({method}): {score(path)}, "
              f"{wall:.1f} s, {mib:.0f} MiB; medidiff took {medidiff_wall / wall:.2f}x its time")  # fmt: skip
    if args.bm4d:
        from medidiff.benchmark import ClassicalSettings, _bm4d

        box = metrics.mask_box(mask, margin=8)
        start = time.perf_counter()
        bm4d_box = _bm4d(noisy[box], sigma, True, ClassicalSettings())
        seconds = time.perf_counter() - start
        bm4d_out = noisy.copy()
        bm4d_out[box] = bm4d_box
        print(f"BM4D (box {tuple(s.stop - s.start for s in box)}): {score(bm4d_out)}, {seconds:.0f} s")


if __name__ == "__main__":
    main()
