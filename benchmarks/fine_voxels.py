"""Scans at finer voxels than the bundled models were trained on: reference scans upsampled.

Usage:
    python benchmarks/fine_voxels.py write OUT_DIR [--data-dir DIR]
    python benchmarks/fine_voxels.py sweep SCAN FACTOR [--reference-noise HU] [--level HU]
                                     [--scales 1 1.2 1.4 1.7] [--blends default 0] [--seed 7]
                                     [--models ct FILE ...]
                                     [--anchors] [--data-dir DIR]
    python benchmarks/fine_voxels.py whole DATA_DIR [--models ct FILE ...] [--config YAML]
    python benchmarks/fine_voxels.py mr FACTOR [--levels 5 9] [--anchors] [--data-dir DIR]

``write``: the chest CTA (1.5 mm) with its in-plane axes upsampled 2x by cubic interpolation
(0.747 x 0.747 x 1.5 mm, 240x252x164: scipy's zoom keeps the corner voxels), for benchmarks/fine_voxels_ct.yaml.

``sweep``: the middle 56 axial slices of SCAN (a reference file name) upsampled FACTOR x in-plane;
with ``--reference-noise`` a first projection-domain low-dose simulation at that level becomes the
reference (a real full-dose series carries noise of its own at its pixel size; interpolation alone
leaves the reference smoother than any real scan), then ``--level`` HU are simulated on top of it.
Prints foreground PSNR / SSIM (HU window [-1000, 1000], range 2000) of the noisy slab, of
medidiff's default told each ``--scales`` value as its network sigma scale, with each of ``--blends``
(``default``: the CT default's blend), for each of ``--models`` (a name, a run folder or a weights
file), and with ``--anchors`` of DIPY's NLM (blockwise, its default, and classic) and BM4D (if
installed) given the sigma of the added noise.

``whole``: each of ``--models`` with medidiff's defaults on the whole upsampled chest that ``write``
put in DATA_DIR, with the noise draws of ``medidiff benchmark --config benchmarks/fine_voxels_ct.yaml``
(the same scoring), so a new CT model can be compared with that run's rows without rerunning it.
``--config configs/benchmark.yaml`` with the reference folder as DATA_DIR does the same for the main
benchmark's CT cases (its draws: a case's seed depends on its place in the config).

``mr``: the central 128x128x48 voxels of the Colin27 T1 brain (1 mm), scaled to [0, 1] by its
99.9th percentile, upsampled FACTOR x along every axis (1.25: 0.8 mm, 160x160x60), Rician noise at
``--levels`` % (seed 3); foreground PSNR / SSIM (peak 1) of medidiff's default and, with
``--anchors``, of BM4D given the true sigma.

Interpolated references are smoother than scans acquired at that voxel size, so this is a probe of
how the CT model behaves on finer grids, not a substitute for a real sub-millimetre series.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import zoom

from medidiff import metrics
from medidiff.benchmark import (
    BenchmarkConfig,
    ClassicalSettings,
    _bm4d,
    _nlmeans,
    _nlmeans_classic,
    load_benchmark_config,
    make_samples,
)
from medidiff.benchmark import _score as score_sample
from medidiff.ct_dose import simulate_low_dose
from medidiff.inference import Denoiser
from medidiff.noise import add_rician_numpy
from medidiff.volume import Volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"
CHEST = "totalseg_chest_cta_crop_1p5mm.nii.gz"
COLIN27 = "colin27_ch2_T1_brain_1mm.nii.gz"
WINDOW = (-1000.0, 1000.0)
SLAB = 56


def upsample_in_plane(img: nib.Nifti1Image, factor: float, slab: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The volume (optionally its middle ``slab`` axial slices) upsampled ``factor`` x along axes 0, 1."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine.copy()
    if slab is not None and data.shape[2] > slab:
        start = data.shape[2] // 2 - slab // 2
        data = data[:, :, start : start + slab]
        affine[:3, 3] += affine[:3, 2] * start
    if factor != 1:
        before = data.shape
        data = zoom(data, (factor, factor, 1), order=3).astype(np.float32)
        for axis in (0, 1):  # scipy's zoom maps the corner voxels onto each other: voxel 0 stays put
            affine[:3, axis] *= (before[axis] - 1) / (data.shape[axis] - 1)
    return data, affine


def write(out_dir: Path, data_dir: Path) -> None:
    data, affine = upsample_in_plane(nib.load(data_dir / CHEST), 2.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "chest_cta_0p75x0p75x1p5mm.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    print(f"wrote {path} {data.shape}")


def _score(clean: np.ndarray, image: np.ndarray, mask: np.ndarray) -> str:
    ref = metrics.apply_window(clean, WINDOW)
    test = metrics.apply_window(np.asarray(image, np.float32), WINDOW)
    return (f"{metrics.psnr(ref, test, mask, data_range=2000.0):.2f} dB / "
            f"{metrics.ssim(ref, test, mask, data_range=2000.0):.4f}")  # fmt: skip


def _blend(text: str) -> float | None:
    return None if text == "default" else float(text)


def sweep(args: argparse.Namespace) -> None:
    x, affine = upsample_in_plane(nib.load(Path(args.data_dir) / args.scan), args.factor, SLAB)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    rng = np.random.default_rng(args.seed)
    reference = x
    if args.reference_noise > 0:
        reference = simulate_low_dose(x, spacing, rng, target_std_hu=args.reference_noise, axis=2).noisy
    result = simulate_low_dose(reference, spacing, rng, target_std_hu=args.level, axis=2)
    noisy, sigma = result.noisy, result.noise_std_hu
    mask = metrics.foreground_mask(reference, "CT", slice_axis=2)
    print(f"{args.scan} x{args.factor:g} in-plane, spacing {spacing}, shape {x.shape}, "
          f"reference noise {args.reference_noise:g} HU, added {sigma:.1f} HU")  # fmt: skip
    print(f"noisy: {_score(reference, noisy, mask)}")
    for model in args.models:
        den = Denoiser(model=model, device="cpu")
        for scale in args.scales:
            for blend in args.blends:
                options = {} if blend is None else {"blend": blend}
                start = time.perf_counter()
                out = den.denoise_volume(
                    Volume.from_array(noisy, affine, modality="CT"), network_sigma_scale=scale, **options
                )
                told = f"network sigma scale {scale:g}" + ("" if blend is None else f", blend {blend:g}")
                seconds = time.perf_counter() - start
                print(f"medidiff {model}, {told} (sigma est {out.sigma:.1f}): "
                      f"{_score(reference, out.volume.data[0], mask)} in {seconds:.1f} s")  # fmt: skip
    if args.anchors:
        anchors = (("DIPY NLM (blockwise)", _nlmeans), ("DIPY NLM (classic)", _nlmeans_classic), ("BM4D", _bm4d))
        for name, method in anchors:
            try:
                anchor = method(noisy, sigma, True, ClassicalSettings())
            except ImportError as exc:
                print(f"{name}: skipped ({exc})")
                continue
            print(f"{name}: {_score(reference, anchor, mask)}")


def score_models(cfg: BenchmarkConfig, models: list[str]) -> list[tuple[str, float, str, float, float, float]]:
    """(case, level, model, PSNR, SSIM, sigma estimate) of each model's default on ``cfg``'s CT draws."""
    samples = make_samples(cfg, modality="CT")
    rows = []
    for model in models:
        den = Denoiser(model=model, device="cpu")
        for sample in samples:
            out = den.denoise_volume(Volume.from_array(sample.noisy, sample.affine, modality="CT"))
            psnr, ssim = score_sample(sample, out.volume.data[0])
            rows.append((sample.case.name, sample.level, model, psnr, ssim, float(out.sigma)))
    return rows


def whole(args: argparse.Namespace) -> None:
    cfg = load_benchmark_config(args.config, data_dir=args.data_dir)
    for case, level, model, psnr, ssim, sigma in score_models(cfg, args.models):
        print(f"{case} {level:g} HU, medidiff {model} (sigma est {sigma:.1f}): {psnr:.2f} dB / {ssim:.4f}")


def mr(args: argparse.Namespace) -> None:
    data = np.asarray(nib.load(Path(args.data_dir) / COLIN27).dataobj, dtype=np.float32)
    centre = [n // 2 for n in data.shape]
    x = data[tuple(slice(c - h, c + h) for c, h in zip(centre, (64, 64, 24), strict=True))]
    x = x / np.percentile(x, 99.9)
    before = x.shape
    if args.factor != 1:
        x = np.clip(zoom(x, args.factor, order=3), 0, None).astype(np.float32)
    affine = np.diag([(n - 1) / (m - 1) for n, m in zip(before, x.shape, strict=True)] + [1.0])
    mask = metrics.foreground_mask(x, "MR")
    den = Denoiser(model="mr", device="cpu")

    def score(image: np.ndarray) -> str:
        psnr = metrics.psnr(x, image, mask, data_range=1.0)
        return f"{psnr:.2f} dB / {metrics.ssim(x, image, mask, data_range=1.0):.4f}"

    for level in args.levels:
        noisy = add_rician_numpy(x, level / 100.0, np.random.default_rng(3)).astype(np.float32)
        print(f"Colin27 crop x{args.factor:g} {x.shape}, {level:g} %: noisy {score(noisy)}")
        out = den.denoise_volume(Volume.from_array(noisy, affine, modality="MR"))
        print(f"  medidiff (default): {score(out.volume.data[0])}")
        if args.anchors:
            try:
                print(f"  BM4D: {score(_bm4d(noisy, level / 100.0, False, ClassicalSettings()))}")
            except ImportError as exc:
                print(f"  BM4D: skipped ({exc})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("out_dir", type=Path)
    w.add_argument("--data-dir", type=Path, default=DATA)
    s = sub.add_parser("sweep")
    s.add_argument("scan")
    s.add_argument("factor", type=float)
    s.add_argument("--data-dir", type=Path, default=DATA)
    s.add_argument("--reference-noise", type=float, default=0.0)
    s.add_argument("--level", type=float, default=50.0)
    s.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.2, 1.4, 1.7])
    s.add_argument("--blends", type=_blend, nargs="+", default=[None],
                   help="blends to run each scale with; 'default' is the CT default")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--models", nargs="+", default=["ct"])
    s.add_argument("--anchors", action="store_true")
    h = sub.add_parser("whole")
    h.add_argument("data_dir", type=Path)
    h.add_argument("--models", nargs="+", default=["ct"])
    h.add_argument("--config", type=Path, default=Path(__file__).resolve().parent / "fine_voxels_ct.yaml")
    m = sub.add_parser("mr")
    m.add_argument("factor", type=float)
    m.add_argument("--data-dir", type=Path, default=DATA)
    m.add_argument("--levels", type=float, nargs="+", default=[5.0, 9.0])
    m.add_argument("--anchors", action="store_true")
    args = parser.parse_args()
    {
        "write": lambda: write(args.out_dir, args.data_dir),
        "sweep": lambda: sweep(args),
        "whole": lambda: whole(args),
        "mr": lambda: mr(args),
    }[args.command]()


if __name__ == "__main__":
    main()
