"""How the MR detail step was set: ``refine.shrink_faint_detail`` after guided averaging, on a grid.

Usage: python benchmarks/detail_floor_grid.py [--data-dir DIR] [--brain CONFIG DATA_DIR ...] [--ct]

Each scan is denoised once with ``medidiff denoise``'s defaults but the detail step off
(``detail_floor=0``, sigma estimated); the step then runs on that output for each
(smoothing, window, floor) of ``GRID``, with the same estimated sigma, as the denoiser runs it
(the denoiser applies it to the box around the signal, this script to the whole volume: they
differ only in the background at the box's edge). Scans:

- the benchmark's Colin27 inputs at 3, 5 and 9 % (``make_samples`` on configs/benchmark.yaml, the
  noise draws of docs/benchmarks.md), scored as the benchmark scores them;
- with ``--brain CONFIG DATA_DIR`` (repeatable), the MR cases of another benchmark config
  (``benchmarks/mr_mni152.yaml``, ``benchmarks/mr_phantom_head.yaml``), scored the same way;
- the two MR training scans recorrupted at 3, 5 and 9 % (the draws of ``guided_radius_grid.py``),
  scored against the recorrupted target with its noise taken out (as ``mr_model_default.py``).

With ``--ct`` the scans are CT instead: the benchmark's chest CTA (held out) and the CT abdomen of
``benchmarks/ct_abdomen_in_sample.yaml`` (seen in training) at their noise levels, denoised with the CT
defaults; the step runs before the CT blend, as in the denoiser, and the blend follows it.

It prints the scores with the step off, then each setting's change in PSNR (dB) / SSIM per case.
docs/design.md (section 4, "Faint detail") quotes the output.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from guided_radius_grid import recorrupt, recorrupted_psnr
from mr_training_scans import training_scans
from network_sigma_scale import ssim_noisy_reference

# (smoothing, window, floor): the shipped setting is (0.7, 1.5, 0.05)
GRID = (
    (0.7, 1.5, 0.03), (0.7, 1.5, 0.05), (0.7, 1.5, 0.06), (0.7, 1.5, 0.08),
    (0.7, 1.0, 0.05), (0.7, 2.0, 0.05),
    (1.0, 1.5, 0.05), (1.0, 1.5, 0.08),
    (1.5, 1.5, 0.05), (1.5, 1.5, 0.08), (1.5, 1.5, 0.12),
    (2.0, 1.5, 0.08),
)  # fmt: skip


def main() -> None:
    from medidiff.refine import shrink_faint_detail

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reference"))
    parser.add_argument("--brain", nargs=2, action="append", default=[], metavar=("CONFIG", "DATA_DIR"))
    parser.add_argument("--ct", action="store_true", help="the CT scans instead of the MR ones")
    args = parser.parse_args()
    cases = ct_cases(args.data_dir) if args.ct else mr_cases(args.data_dir, args.brain)
    base = {name: score(out) for name, out, _, score in cases}
    print("detail step off: " + "; ".join(f"{n} {p:.3f} / {q:.5f}" for n, (p, q) in base.items()), flush=True)
    for smoothing, window, floor in GRID:
        changes = []
        for name, out, sigma, score in cases:
            p, q = score(shrink_faint_detail(out, sigma, floor, smoothing=smoothing, window=window))
            changes.append(f"{name} {p - base[name][0]:+.3f} / {q - base[name][1]:+.5f}")
        print(f"smoothing {smoothing:g}, window {window:g}, floor {floor:g}: " + "; ".join(changes), flush=True)


# (name, output with the step off and before any blend, estimated sigma, scorer of a step's output)
Case = tuple[str, np.ndarray, float, Callable[[np.ndarray], tuple[float, float]]]


def mr_cases(data_dir: str, brains_extra: list[list[str]]) -> list[Case]:
    """The benchmark's Colin27 draws, the ``--brain`` configs' MR cases and the recorrupted training scans."""
    from medidiff.benchmark import _score, load_benchmark_config, make_samples
    from medidiff.inference import Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.volume import Volume

    den = Denoiser(model="mr", device="cpu")

    def off(y: np.ndarray, affine: np.ndarray, sigma: float | None = None) -> np.ndarray:
        volume = Volume.from_array(y, affine, modality="MR")
        return den.denoise_volume(volume, sigma=sigma, detail_floor=0).volume.data[0]

    cases: list[Case] = []
    brains = [s for s in make_samples(load_benchmark_config(data_dir=data_dir)) if s.case.modality == "MR"]
    for config, extra_dir in brains_extra:
        more = make_samples(load_benchmark_config(config, data_dir=extra_dir))
        brains += [s for s in more if s.case.modality == "MR"]
    for sample in brains:
        out = off(sample.noisy, sample.affine)
        cases.append((f"{sample.case.name} {sample.level:g} %", out, estimate_sigma(sample.noisy, "MR"),
                      lambda x, s=sample: _score(s, x)))
        print(f"denoised {cases[-1][0]}", flush=True)
    for name, r, mask in training_scans(data_dir):
        own = estimate_sigma(r, "MR")
        for level in (3.0, 5.0, 9.0):
            y, target, target_var = recorrupt(r, own, level / 100, [11, int(level)])
            sigma = estimate_sigma(y, "MR")
            cases.append((f"{name} {level:g} % (recorrupted)", off(y, np.eye(4), sigma), sigma,
                          lambda x, t=target, m=mask, v=target_var: (recorrupted_psnr(x, t, m, v),
                                                                    ssim_noisy_reference(t, x, m, v))))
            print(f"denoised {cases[-1][0]}", flush=True)
    return cases


def ct_cases(data_dir: str) -> list[Case]:
    """The benchmark's chest CTA draws and the in-sample abdomen's, the CT blend applied when scoring."""
    from medidiff.benchmark import _score, load_benchmark_config, make_samples
    from medidiff.inference import DEFAULT_BLEND, Denoiser
    from medidiff.noise import estimate_sigma
    from medidiff.volume import Volume

    den = Denoiser(model="ct", device="cpu")
    blend = DEFAULT_BLEND["CT"]
    abdomen = Path(__file__).resolve().parent / "ct_abdomen_in_sample.yaml"
    samples = [s for s in make_samples(load_benchmark_config(data_dir=data_dir)) if s.case.modality == "CT"]
    samples += make_samples(load_benchmark_config(abdomen, data_dir=data_dir))
    cases: list[Case] = []
    for sample in samples:
        volume = Volume.from_array(sample.noisy, sample.affine, modality="CT")
        out = den.denoise_volume(volume, detail_floor=0, blend=0).volume.data[0]
        cases.append((f"{sample.case.name} {sample.level:g} HU", out, estimate_sigma(sample.noisy, "CT"),
                      lambda x, s=sample: _score(s, (1.0 - blend) * x + blend * s.noisy)))
        print(f"denoised {cases[-1][0]}", flush=True)
    return cases


if __name__ == "__main__":
    main()
