"""The benchmark: medidiff against classical denoisers on held-out reference scans.

Cases (clean reference volumes) x noise levels x methods. Noise is simulated on the clean volume:

* MR: Rician noise (``medidiff.noise.add_rician_numpy``) on the clean volume scaled to [0, 1] by its
  99.9th percentile, sigma = the level in % of that percentile. Metrics: foreground PSNR/SSIM at
  peak 1 on the scaled data, auto MR mask of the clean volume.
* CT: projection-domain Poisson noise (:mod:`medidiff.ct_dose`), the level being the target noise
  std over soft tissue in HU. Metrics in the HU window [-1000, 1000], data range 2000, body mask.

Classical methods get the true sigma (MR: the Rician sigma; CT: the std of the added noise over soft
tissue); medidiff estimates its own, recorded next to the true value. Each method runs in a process
of its own (started by a fork server), so its wall time and peak memory are measured in the same run
and a crash of one method is recorded in its row without stopping the others.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medidiff import metrics
from medidiff.config import DuplicateKeyError, build_dataclass, safe_load_strict
from medidiff.errors import ConfigError, MedidiffError, OutputExistsError
from medidiff.files import atomic_path, make_folder, remove_empty_folders, write_text_atomic
from medidiff.volume import Volume

METHODS = (
    "medidiff", "medidiff-1step", "medidiff-fp32", "medidiff-sigma", "medidiff-3step", "medidiff-avg",
    "medidiff-flips", "medidiff-net", "nlmeans", "nlmeans-classic", "tv", "wavelet", "bm4d",
)  # fmt: skip
MEDIDIFF_METHODS = tuple(m for m in METHODS if m.startswith("medidiff"))
CT_DISPLAY_WINDOW = (-200.0, 600.0)
DOCS_START, DOCS_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
OUTPUT_FILES = ("results.csv", "results.json", "results.md")
CSV_FIELDS = [
    "case", "modality", "noise_level", "noise_unit", "sigma_true", "sigma_est", "sigma_unit", "method",
    "psnr", "ssim", "time_s", "setup_s", "peak_mem_mb", "uncertainty_mean", "shape", "i0",
    "reference_sigma_est", "model", "model_sha256", "error",
]  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "benchmark.yaml"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "reference"


def source_root() -> Path:
    """The source checkout: the package's own (an editable install), else the current folder when it
    holds ``configs/benchmark.yaml`` (``pip install .`` run from a clone), else the package's parent."""
    for root in (REPO_ROOT, Path.cwd()):
        if (root / "configs" / "benchmark.yaml").is_file():
            return root
    return REPO_ROOT


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CaseConfig:
    """One held-out reference volume and the noise levels simulated on it.

    ``noise_levels``: MR Rician sigma in % of the clean 99.9th percentile; CT target soft-tissue noise
    std in HU. ``quick_noise_level``: the level ``--quick`` runs (None: the middle one).
    ``quick_crop``: the crop ``--quick`` uses (voxels per axis), centred on the foreground.
    """

    name: str
    file: str
    modality: Literal["MR", "CT"]
    noise_levels: list[float]
    quick_noise_level: float | None = None
    quick_crop: list[int] = field(default_factory=lambda: [64, 64, 64])


def _default_cases() -> list[CaseConfig]:
    return [
        CaseConfig("mr_colin27_t1", "colin27_ch2_T1_brain_1mm.nii.gz", "MR", [3.0, 5.0, 9.0], 5.0),
        CaseConfig("ct_chest_cta", "totalseg_chest_cta_crop_1p5mm.nii.gz", "CT", [25.0, 50.0], 50.0,
                   [64, 64, 32]),
    ]  # fmt: skip


@dataclass(frozen=True)
class MedidiffSettings:
    """``Denoiser(model, device)``; ``model`` None = the bundled default; ``steps`` None = its default.

    ``medidiff-avg`` averages ``avg_samples`` runs of ``avg_steps`` steps each; with ``avg_strength``
    > 0 every run starts from the scan re-noised by its own draw (SDEdit), deterministic Euler after
    that; with 0 the runs are ancestral samples. ``medidiff-flips`` averages the default over
    ``flips`` mirror images of the scan.
    """

    model: str | None = None
    device: str = "auto"
    steps: int | None = None
    avg_samples: int = 4
    avg_steps: int | None = 1
    avg_strength: float = 0.5
    flips: int = 8


@dataclass(frozen=True)
class ClassicalSettings:
    """The classical comparators (all get the true sigma).

    TV weight = ``tv_weight_factor`` x sigma (0.5 was best of 0.25-3 on a crop of seg3d_T1_head at
    3-9 % Rician noise, not a benchmark case). ``nlmeans_block_radius`` None = DIPY's default for the
    method (2 blockwise, 5 classic). Both modalities default to DIPY's default ``blockwise`` method,
    the one users run; ``nlmeans-classic`` adds the classic method as a second row, and the better
    of the two is the anchor (blockwise loses on the 1.5 mm chest CTA, where it smooths HU-scale CT
    far beyond its noise; docs/evaluation.md).
    """

    tv_weight_factor: float = 0.5
    nlmeans_method_mr: Literal["blockwise", "classic"] = "blockwise"
    nlmeans_method_ct: Literal["blockwise", "classic"] = "blockwise"
    nlmeans_patch_radius: int = 1
    nlmeans_block_radius: int | None = None
    wavelet: str = "db1"


@dataclass(frozen=True)
class CTSettings:
    """Projection-domain CT noise simulation (``medidiff.ct_dose``)."""

    n_angles: int = 360
    filter: Literal["ramp", "hann"] = "ramp"


@dataclass(frozen=True)
class QuickSettings:
    """What ``--quick`` changes besides crops and levels: the methods (unless ``--methods``), samples."""

    methods: list[str] = field(default_factory=lambda: ["medidiff", "medidiff-3step", "nlmeans", "tv", "wavelet"])
    avg_samples: int = 2


@dataclass(frozen=True)
class BenchmarkConfig:
    """The whole benchmark; ``data_dir`` "" = ``../shared/data/reference`` beside the repository."""

    data_dir: str = ""
    seed: int = 0
    isolate: bool = True
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    cases: list[CaseConfig] = field(default_factory=_default_cases)
    medidiff: MedidiffSettings = field(default_factory=MedidiffSettings)
    classical: ClassicalSettings = field(default_factory=ClassicalSettings)
    ct: CTSettings = field(default_factory=CTSettings)
    quick: QuickSettings = field(default_factory=QuickSettings)


def load_benchmark_config(
    path: str | os.PathLike[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    methods: list[str] | None = None,
) -> BenchmarkConfig:
    """Read a benchmark YAML (``yaml.safe_load``) into a :class:`BenchmarkConfig`.

    Args:
        path: the YAML; None = the repository's ``configs/benchmark.yaml`` when present, else defaults.
        data_dir: overrides the config's ``data_dir`` (relative to the working directory).
        methods: overrides the config's methods, quick ones included.

    A relative ``data_dir`` in the file is resolved against the file's folder.

    Raises:
        ConfigError: unreadable YAML, an unknown key (the message lists the valid ones), a bad value.
    """
    import yaml

    raw: Any = {}
    base = Path.cwd()
    default = source_root() / "configs" / "benchmark.yaml"
    if path is not None or default.exists():
        cfg_path = Path(path) if path is not None else default
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path}: benchmark config not found; pass --config FILE")
        try:
            raw = safe_load_strict(cfg_path.read_text(encoding="utf-8")) or {}
        except DuplicateKeyError as exc:
            raise ConfigError(f"{cfg_path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        base = cfg_path.resolve().parent
    cfg: BenchmarkConfig = build_dataclass(BenchmarkConfig, raw, "", "benchmark config")
    if data_dir is not None:
        resolved = Path(data_dir).resolve()
    else:
        resolved = (base / cfg.data_dir).resolve() if cfg.data_dir else DEFAULT_DATA_DIR
    cfg = dataclasses.replace(cfg, data_dir=str(resolved))
    if methods is not None:
        quick = dataclasses.replace(cfg.quick, methods=list(methods))
        cfg = dataclasses.replace(cfg, methods=list(methods), quick=quick)
    for where, names in (("methods", cfg.methods), ("quick.methods", cfg.quick.methods)):
        for name in names:
            if name not in METHODS:
                raise ConfigError(f"{where}: unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    for index, case in enumerate(cfg.cases):
        if not case.noise_levels or min(case.noise_levels) <= 0:
            raise ConfigError(f"cases[{index}].noise_levels: give positive levels, e.g. [3, 5, 9]")
        if len(case.quick_crop) != 3 or min(case.quick_crop) < 8:
            raise ConfigError(f"cases[{index}].quick_crop: give three sizes of at least 8, e.g. [64, 64, 64]")
    if min(cfg.medidiff.avg_samples, cfg.quick.avg_samples) < 2:
        raise ConfigError("medidiff.avg_samples and quick.avg_samples must be at least 2")
    from medidiff.inference import MIRRORS

    if not 2 <= cfg.medidiff.flips <= len(MIRRORS):
        raise ConfigError(f"medidiff.flips must be between 2 and {len(MIRRORS)}, got {cfg.medidiff.flips}")
    return cfg


# ---------------------------------------------------------------- cases and noise


@dataclass
class Sample:
    """One case at one noise level, in metric units (MR: [0, 1]-scaled; CT: HU)."""

    case: CaseConfig
    level: float
    clean: np.ndarray
    noisy: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    sigma_true: float
    slice_axis: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> tuple[float, float] | None:
        return metrics.CT_WINDOW if self.case.modality == "CT" else None

    @property
    def data_range(self) -> float:
        return 2000.0 if self.case.modality == "CT" else 1.0


def _crop_box(mask: np.ndarray, size: list[int]) -> tuple[slice, ...]:
    """A box of ``size`` centred on the centre of the mask's bounding box, inside the volume."""
    out = []
    for axis, (b, n) in enumerate(zip(metrics.mask_box(mask), size, strict=True)):
        n = min(n, mask.shape[axis])
        start = min(max((b.start + b.stop) // 2 - n // 2, 0), mask.shape[axis] - n)
        out.append(slice(start, start + n))
    return tuple(out)


def make_samples(cfg: BenchmarkConfig, quick: bool = False, modality: str | None = None) -> list[Sample]:
    """Read each case and simulate its noise levels (one level and a centred crop with ``quick``).

    ``modality`` ("MR" or "CT") skips the other cases, which keep their place: a case's noise seed
    depends on its index, so the draws are those of the whole benchmark.
    """
    from medidiff.ct_dose import simulate_low_dose
    from medidiff.io import read_volume
    from medidiff.noise import add_rician_numpy, estimate_sigma

    samples = []
    for case_index, case in enumerate(cfg.cases):
        if modality is not None and case.modality != modality:
            continue
        path = Path(cfg.data_dir) / case.file
        if not path.exists():
            raise MedidiffError(f"{path}: reference scan not found; pass --data-dir or set data_dir in the config")
        volume = read_volume(str(path))
        clean = volume.data[0].astype(np.float32)
        affine = np.array(volume.meta.affine, dtype=np.float64)
        axis = metrics.axial_axis(affine)
        scale = float(np.percentile(clean, 99.9)) if case.modality == "MR" else 1.0
        clean = clean / scale if case.modality == "MR" else clean
        box = tuple(slice(0, n) for n in clean.shape)
        levels = case.noise_levels
        if quick:
            box = _crop_box(metrics.foreground_mask(clean, case.modality, slice_axis=axis), case.quick_crop)
            levels = [case.quick_noise_level or sorted(levels)[len(levels) // 2]]
        crop_affine = affine.copy()
        crop_affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64)
        for level in levels:
            rng = np.random.default_rng([cfg.seed, case_index, int(round(level * 1000))])
            info: dict[str, Any] = {"file": str(path), "scale": scale}
            if case.modality == "MR":
                x0 = clean[box]
                noisy, sigma = add_rician_numpy(x0, level / 100.0, rng), level / 100.0
            else:  # simulate whole axial slices, then crop in-plane; calibrate the dose inside the crop
                sub = clean[tuple(box[k] if k == axis else slice(None) for k in range(3))]
                inplane = tuple(slice(None) if k == axis else box[k] for k in range(3))
                region = np.zeros(sub.shape, dtype=bool)
                region[inplane] = True
                result = simulate_low_dose(
                    sub, volume.meta.spacing, rng, target_std_hu=level, axis=axis,
                    n_angles=cfg.ct.n_angles, filter_name=cfg.ct.filter, measure_mask=region,
                )  # fmt: skip
                x0, noisy = sub[inplane], result.noisy[inplane]
                sigma, info["i0"] = result.noise_std_hu, result.i0
            mask = metrics.foreground_mask(x0, case.modality, slice_axis=axis)
            info["reference_sigma_est"] = estimate_sigma(x0, case.modality)
            samples.append(Sample(case, level, x0, noisy, mask, crop_affine, float(sigma), axis, info))
    return samples


# ---------------------------------------------------------------- methods


@dataclass
class MethodOutput:
    """A method's output (metric units), optional uncertainty, sigma estimate, timings and memory;
    for medidiff, the model that ran (its name and the sha256 of its file, as the process loaded it)."""

    denoised: np.ndarray
    uncertainty: np.ndarray | None = None
    sigma_est: float | None = None
    setup_s: float = 0.0
    run_s: float = 0.0
    peak_mem_mb: float | None = None
    model: str | None = None
    model_sha256: str | None = None


def _nlmeans(noisy: np.ndarray, sigma: float, ct: bool, cl: ClassicalSettings) -> np.ndarray:
    from dipy.denoise.nlmeans import nlmeans

    # DIPY's nlmeans expects non-negative data: shift HU by +1024 (clipping the few voxels still < 0)
    arr = np.clip(noisy + 1024.0, 0.0, None) if ct else noisy
    out = nlmeans(
        arr, sigma, patch_radius=cl.nlmeans_patch_radius, block_radius=cl.nlmeans_block_radius,
        rician=not ct, method=cl.nlmeans_method_ct if ct else cl.nlmeans_method_mr,
    )  # fmt: skip
    return out - 1024.0 if ct else out


def _nlmeans_classic(noisy: np.ndarray, sigma: float, ct: bool, cl: ClassicalSettings) -> np.ndarray:
    classic = dataclasses.replace(cl, nlmeans_method_mr="classic", nlmeans_method_ct="classic")
    return _nlmeans(noisy, sigma, ct, classic)


def _tv(noisy: np.ndarray, sigma: float, ct: bool, cl: ClassicalSettings) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(noisy, weight=cl.tv_weight_factor * sigma)


def _wavelet(noisy: np.ndarray, sigma: float, ct: bool, cl: ClassicalSettings) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(noisy, sigma=sigma, wavelet=cl.wavelet, mode="soft", rescale_sigma=True)


def _bm4d(noisy: np.ndarray, sigma: float, ct: bool, cl: ClassicalSettings) -> np.ndarray:
    import bm4d  # type: ignore[import-not-found]  # optional: installed by the user, never a dependency

    return bm4d.bm4d(noisy, sigma_psd=sigma)


CLASSICAL: dict[str, Callable[[np.ndarray, float, bool, ClassicalSettings], np.ndarray]] = {
    "nlmeans": _nlmeans,
    "tv": _tv,
    "wavelet": _wavelet,
    "bm4d": _bm4d,
    "nlmeans-classic": _nlmeans_classic,
}


def _medidiff_runner(
    name: str, sample: Sample, cfg: BenchmarkConfig, quick: bool, factory: Callable[..., Any] | None
) -> Callable[[], tuple]:
    if factory is None:
        from medidiff.inference import Denoiser

        factory = Denoiser

    settings = cfg.medidiff
    denoiser = factory(model=settings.model, device=settings.device)
    denoiser.load(sample.case.modality)  # setup, as the classical methods' imports are: not in the timed call
    volume = Volume.from_array(sample.noisy, sample.affine, modality=sample.case.modality)
    kwargs: dict[str, Any] = {"modality": sample.case.modality, "seed": cfg.seed, "steps": settings.steps}
    if name == "medidiff-1step":
        kwargs["steps"] = 1
    elif name == "medidiff-fp32":
        kwargs["precision"] = "fp32"
    elif name == "medidiff-sigma":  # the information the classical methods get
        kwargs["sigma"] = sample.sigma_true
    elif name == "medidiff-3step":
        kwargs["steps"] = 3
    elif name == "medidiff-flips":
        kwargs["flips"] = settings.flips
    elif name == "medidiff-net":  # the network's estimate alone: no guided averaging, no blend
        kwargs["guided_radius"] = 0
        kwargs["blend"] = 0.0
    elif name == "medidiff-avg":
        kwargs["samples"] = cfg.quick.avg_samples if quick else settings.avg_samples
        kwargs["steps"] = settings.avg_steps
        if settings.avg_strength > 0:
            kwargs["strength"] = settings.avg_strength
            kwargs["sampler"] = "euler"

    def run() -> tuple:
        result = denoiser.denoise_volume(volume, **kwargs)  # sigma estimated unless medidiff-sigma
        spread = None if result.uncertainty is None else np.asarray(result.uncertainty.data[0], np.float32)
        info = result.info  # DenoiseResult.info: the model's name and hash, as the sidecar records them
        return result.volume.data[0], spread, float(result.sigma), info.get("model"), info.get("model_sha256")

    return run


def _repeats_another_row(name: str, modality: str, cfg: BenchmarkConfig, methods: list[str]) -> bool:
    """True for a row that would repeat another: nlmeans-classic where nlmeans is classic already,
    medidiff-1step / -3step where that is the modality's default step count, medidiff-net where the
    modality's default is the network's estimate alone."""
    if name == "nlmeans-classic" and "nlmeans" in methods:
        return (cfg.classical.nlmeans_method_mr if modality == "MR" else cfg.classical.nlmeans_method_ct) == "classic"
    if name in ("medidiff-1step", "medidiff-3step") and "medidiff" in methods and cfg.medidiff.steps is None:
        from medidiff.inference import DEFAULT_STEPS

        return DEFAULT_STEPS[modality] == (1 if name == "medidiff-1step" else 3)
    if name == "medidiff-net" and "medidiff" in methods:
        from medidiff.inference import DEFAULT_BLEND, DEFAULT_GUIDED_RADIUS

        return DEFAULT_GUIDED_RADIUS[modality] == 0 and DEFAULT_BLEND[modality] == 0
    return False


def run_method(
    name: str,
    sample: Sample,
    cfg: BenchmarkConfig,
    quick: bool = False,
    factory: Callable[..., Any] | None = None,
) -> MethodOutput:
    """Run one method on ``sample.noisy``; setup (model loading) is timed apart from the denoising call.

    ``factory`` builds the medidiff denoiser (default ``medidiff.inference.Denoiser``); its model is
    loaded (``load``) in the setup.
    """
    start = time.perf_counter()
    if name in MEDIDIFF_METHODS:
        run = _medidiff_runner(name, sample, cfg, quick, factory)
    elif name in CLASSICAL:
        ct = sample.case.modality == "CT"
        function = CLASSICAL[name]

        def run() -> tuple:
            return function(sample.noisy, sample.sigma_true, ct, cfg.classical), None, None, None, None

    else:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    ready = time.perf_counter()
    denoised, spread, sigma_est, model, model_sha256 = run()
    done = time.perf_counter()
    return MethodOutput(
        np.asarray(denoised, np.float32), spread, sigma_est, ready - start, done - ready,
        model=model, model_sha256=model_sha256,
    )  # fmt: skip


# ---------------------------------------------------------------- measuring in a child process

PRELOAD = [
    "medidiff.benchmark", "medidiff.inference", "dipy.denoise.nlmeans", "skimage.restoration._denoise", "pywt",
]  # fmt: skip
MEMORY_NOTES = {
    "vmhwm": "peak resident memory (VmHWM, reset through /proc/self/clear_refs) above the resident "
    "memory before the method, in a separate process per method",
    "maxrss": "peak resident memory (getrusage ru_maxrss) above the resident memory before the method, "
    "in a separate process per method",
    "none": "not measured (isolate: false)",
}


def _proc_status_mib(key: str) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0
    return None


def _prepare(name: str) -> None:
    """Import what a method needs before it is timed (scikit-image resolves submodules lazily)."""
    if name in ("nlmeans", "nlmeans-classic"):
        from dipy.denoise.nlmeans import nlmeans  # noqa: F401
    elif name in ("tv", "wavelet"):
        from skimage.restoration import denoise_tv_chambolle, denoise_wavelet  # noqa: F401

        if name == "wavelet":
            import pywt  # noqa: F401
    elif name == "bm4d":
        import bm4d  # type: ignore[import-not-found]  # noqa: F401


def _measured(
    name: str, sample: Sample, cfg: BenchmarkConfig, quick: bool, factory: Callable[..., Any] | None
) -> tuple[MethodOutput, str]:
    import resource

    _prepare(name)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
        mode = "vmhwm"
    except OSError:
        mode = "maxrss"
    before = _proc_status_mib("VmRSS") or 0.0
    output = run_method(name, sample, cfg, quick, factory)
    if mode == "vmhwm":
        peak = _proc_status_mib("VmHWM") or 0.0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    output.peak_mem_mb = max(0.0, peak - before)
    return output, mode


def _child(conn: Any, name: str, sample: Sample, cfg: BenchmarkConfig, quick: bool, factory: Any) -> None:
    try:
        conn.send(("ok", _measured(name, sample, cfg, quick, factory)))
    except BaseException as exc:  # noqa: BLE001 - any failure goes into the method's row
        text = str(exc).strip().splitlines()
        conn.send(("error", f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__))
    finally:
        conn.close()


def _process_context() -> Any:
    """A fork server (a fresh process, libraries preloaded) where there is one, else spawn.

    Never plain fork: a process forked after PyTorch or DIPY started their OpenMP thread pools
    deadlocks in the next OpenMP call.
    """
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # import errors there are ignored; the method reports them
        return ctx
    return multiprocessing.get_context("spawn")


def measure_method(
    name: str,
    sample: Sample,
    cfg: BenchmarkConfig,
    quick: bool = False,
    factory: Callable[..., Any] | None = None,
) -> tuple[MethodOutput, str]:
    """Run a method in its own process; returns (output, memory measure key of MEMORY_NOTES).

    ``factory`` (default ``medidiff.inference.Denoiser``) must be importable by name in the child.

    Raises:
        RuntimeError: the method failed (one line: exception type and message) or its process died.
    """
    if not cfg.isolate:
        try:
            return run_method(name, sample, cfg, quick, factory), "none"
        except Exception as exc:  # noqa: BLE001 - reported in the row
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
    ctx = _process_context()
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, name, sample, cfg, quick, factory))
    try:
        process.start()
    except OSError as exc:  # e.g. a script read from stdin, which a fresh process cannot re-import
        parent.close()
        raise RuntimeError(
            f"could not start the method's process ({exc}); run the benchmark with the medidiff "
            "command or from a script file, or set isolate: false"
        ) from None
    finally:
        child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"the method's process died (exit code {process.exitcode})") from None
    finally:
        parent.close()
    process.join()
    if status != "ok":
        raise RuntimeError(payload)
    return payload


# ---------------------------------------------------------------- running


@dataclass
class BenchmarkReport:
    """What :func:`run_benchmark` wrote: rows (case x level x method), machine info, figures, table."""

    output: Path
    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    memory_note: str
    figures: list[Path]
    markdown: str
    summary: str


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions and the date, for the results."""
    import datetime
    import platform
    from importlib import metadata

    from medidiff import __version__

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
    versions: dict[str, str | None] = {}
    for package in ("torch", "numpy", "scikit-image", "dipy", "monai"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "medidiff": __version__,
        "versions": versions,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _score(sample: Sample, image: np.ndarray) -> tuple[float, float]:
    ref = metrics.apply_window(sample.clean, sample.window)
    test = metrics.apply_window(np.asarray(image, np.float32), sample.window)
    return (
        metrics.psnr(ref, test, sample.mask, data_range=sample.data_range),
        metrics.ssim(ref, test, sample.mask, data_range=sample.data_range),
    )


def run_benchmark(
    cfg: BenchmarkConfig, output: str | os.PathLike[str], quick: bool = False, force: bool = False
) -> BenchmarkReport:
    """Run every case x noise level x method; write results.csv/.json/.md and figures to ``output``.

    Raises:
        OutputExistsError: ``output`` holds results already and ``force`` is False.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise MedidiffError(f"{out}: exists and is not a folder; give a folder for --output")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not force:
        raise OutputExistsError(f"{out}: holds results already ({existing[0]}); pass --force to overwrite them")
    created = make_folder(out)  # here, so an unwritable --output fails before the run
    try:
        return _run_into(out, cfg, quick)
    except BaseException:
        remove_empty_folders(created)  # nothing written: none of the folders made for it stays
        raise


def _run_into(out: Path, cfg: BenchmarkConfig, quick: bool) -> BenchmarkReport:
    """The body of :func:`run_benchmark`, writing into the existing folder ``out``."""
    import importlib.util

    from tqdm import tqdm

    methods = list(cfg.quick.methods if quick else cfg.methods)
    skipped = []
    if "bm4d" in methods and importlib.util.find_spec("bm4d") is None:
        methods.remove("bm4d")
        skipped.append("bm4d (not installed; `pip install bm4d`, non-commercial licence)")
    # resolved here so that a replaced ``medidiff.inference.Denoiser`` reaches the method processes
    factory: Callable[..., Any] | None = None
    if any(name in MEDIDIFF_METHODS for name in methods):
        with contextlib.suppress(Exception):  # an import error is reported in the medidiff rows
            from medidiff.inference import Denoiser

            factory = Denoiser

    machine = machine_info()
    samples = make_samples(cfg, quick)
    rows: list[dict[str, Any]] = []
    views: list[dict[str, np.ndarray]] = []
    modes: set[str] = set()
    bar = tqdm(samples, desc="benchmark", unit="case", dynamic_ncols=True)
    for sample in bar:
        mr = sample.case.modality == "MR"
        base = {
            "case": sample.case.name,
            "modality": sample.case.modality,
            "noise_level": sample.level,
            "noise_unit": "% of clean p99.9 (Rician)" if mr else "HU target over soft tissue (projection Poisson)",
            "sigma_true": sample.sigma_true,
            "sigma_unit": "fraction of clean p99.9" if mr else "HU",
            "shape": "x".join(map(str, sample.clean.shape)),
            "i0": sample.info.get("i0"),
            "reference_sigma_est": sample.info.get("reference_sigma_est"),
        }
        position = sample.clean.shape[sample.slice_axis] // 2

        def cut(image: np.ndarray, position: int = position, axis: int = sample.slice_axis) -> np.ndarray:
            return np.take(image, position, axis)

        view = {"clean": cut(sample.clean), "noisy": cut(sample.noisy)}
        psnr_noisy, ssim_noisy = _score(sample, sample.noisy)
        rows.append({**base, "method": "noisy", "psnr": psnr_noisy, "ssim": ssim_noisy})
        for name in methods:
            if _repeats_another_row(name, sample.case.modality, cfg, methods):
                continue
            bar.set_postfix_str(f"{sample.case.name} {sample.level:g}: {name}")
            row = {**base, "method": name}
            try:
                result, mode = measure_method(name, sample, cfg, quick, factory)
                modes.add(mode)
                row["psnr"], row["ssim"] = _score(sample, result.denoised)
                row.update(time_s=result.run_s, setup_s=result.setup_s, peak_mem_mb=result.peak_mem_mb)
                row["sigma_est"] = result.sigma_est
                if result.model_sha256:  # which weights ran, as the method's own process found them
                    row["model"], row["model_sha256"] = result.model, result.model_sha256
                view[name] = cut(result.denoised)
                if name == "medidiff":
                    view["residual medidiff"] = view["noisy"] - view[name]
                if result.uncertainty is not None:
                    row["uncertainty_mean"] = float(np.mean(result.uncertainty[sample.mask]))
                    view[f"uncertainty {name}"] = cut(result.uncertainty)
            except Exception as exc:  # noqa: BLE001 - one failing method must not stop the others
                row["error"] = str(exc) or type(exc).__name__
            rows.append(row)
        views.append(view)
    bar.close()
    if not modes:
        modes = {"vmhwm" if cfg.isolate else "none"}
    note = "; ".join(MEMORY_NOTES[m] for m in sorted(modes))
    figures = _figures(out, samples, views, rows)
    markdown = format_markdown(rows, machine, note, quick, skipped)
    _write_results(out, rows, machine, note, cfg, quick, skipped, markdown)
    summary = f"{markdown}\nwrote {out / 'results.csv'}, results.json, results.md and {len(figures)} figures"
    return BenchmarkReport(out, rows, machine, note, figures, markdown, summary)


# ---------------------------------------------------------------- outputs


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_results(
    out: Path, rows: list[dict[str, Any]], machine: dict[str, Any], note: str, cfg: BenchmarkConfig,
    quick: bool, skipped: list[str], markdown: str,
) -> None:  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})
    write_text_atomic(out / "results.csv", buffer.getvalue())
    document = {
        "machine": machine,
        "memory": note,
        "time": "time_s: wall seconds of the denoising call; setup_s: model loading and similar, apart",
        "metrics": {
            "MR": "foreground PSNR/SSIM at peak 1 on the clean volume scaled to [0, 1] by its 99.9th "
            "percentile, auto MR mask of the clean volume",
            "CT": "PSNR/SSIM in the HU window [-1000, 1000], data range 2000, body mask of the clean volume",
            "SSIM": "scikit-image structural_similarity map (7-voxel uniform window) averaged over the mask",
        },
        "quick": quick,
        "skipped": skipped,
        "config": dataclasses.asdict(cfg),
        "rows": [{k: _json_value(v) for k, v in row.items()} for row in rows],
    }
    write_text_atomic(out / "results.json", json.dumps(document, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown)


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_markdown(
    rows: list[dict[str, Any]], machine: dict[str, Any], note: str, quick: bool, skipped: list[str]
) -> str:
    """The results table in Markdown, with the machine and the measurement conventions."""
    kind = " (quick: centred crops, one noise level)" if quick else ""
    torch_version = machine["versions"].get("torch")
    lines = [
        f"Benchmark{kind}, {machine['date']}, {machine['cpu']}, {machine['usable_cores']} usable cores, "
        f"torch {torch_version}.",
        "",
        "MR: foreground PSNR/SSIM at peak 1 on [0, 1]-scaled data (auto mask); CT: HU window [-1000, 1000], "
        "data range 2000, body mask. SSIM: scikit-image 7-voxel uniform window averaged over the mask. "
        f"Time: wall seconds of the denoising call. Memory: {note}.",
        "",
        "| case | noise | sigma true | method | PSNR dB | SSIM | time s | peak MiB | sigma est | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unit = "%" if r["modality"] == "MR" else " HU"
        lines.append(
            f"| {r['case']} | {r['noise_level']:g}{unit} | {_cell(r.get('sigma_true'), 4)} | {r['method']} | "
            f"{_cell(r.get('psnr'), 2)} | {_cell(r.get('ssim'), 4)} | {_cell(r.get('time_s'), 2)} | "
            f"{_cell(r.get('peak_mem_mb'), 0)} | {_cell(r.get('sigma_est'), 4)} | "
            f"{(r.get('error') or '').replace('|', '/')} |"
        )
    own = {(r["case"], r.get("reference_sigma_est")) for r in rows if r["method"] == "noisy"}
    lines += ["", "Noise already in the references (medidiff.noise.estimate_sigma, metric units): "]
    lines[-1] += ", ".join(f"{case} {_cell(value, 4)}" for case, value in sorted(own, key=str)) + "."
    models = sorted({(r["model"], r["model_sha256"]) for r in rows if r.get("model_sha256")}, key=str)
    if models:
        lines += ["", "medidiff models (sha256 of the weights file): "]
        lines[-1] += ", ".join(f"{name} {digest[:12]}" for name, digest in models) + "."
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def _save_figure(fig: Any, path: Path) -> Path:
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    return path


def _figures(
    out: Path, samples: list[Sample], views: list[dict[str, np.ndarray]], rows: list[dict[str, Any]]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for sample, view in zip(samples, views, strict=True):
        fig, axes = plt.subplots(1, len(view), figsize=(2.2 * len(view), 2.6), squeeze=False)
        lo, hi = CT_DISPLAY_WINDOW if sample.case.modality == "CT" else (0.0, 1.0)
        for ax, (title, image) in zip(axes[0], view.items(), strict=True):
            style: dict[str, Any] = {"cmap": "gray", "vmin": lo, "vmax": hi}
            if title.startswith("residual"):
                style = {"cmap": "RdBu_r", "vmin": -3 * sample.sigma_true, "vmax": 3 * sample.sigma_true}
            elif title.startswith("uncertainty"):
                style = {"cmap": "magma", "vmin": 0.0, "vmax": float(np.percentile(image, 99.5)) or 1.0}
            ax.imshow(np.rot90(image), interpolation="nearest", **style)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        window = "display W800/L200 HU" if sample.case.modality == "CT" else "display [0, 1]"
        fig.suptitle(f"{sample.case.name}, noise {sample.level:g} ({window}, middle axial slice)", fontsize=9)
        paths.append(_save_figure(fig, out / f"montage_{sample.case.name}_{sample.level:g}.png"))
        plt.close(fig)
    paths.append(psnr_figure(rows, out))
    return paths


def psnr_figure(rows: list[dict[str, Any]], out: Path) -> Path:
    """PSNR against noise level, one panel per case; each method keeps one colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    palette = plt.get_cmap("tab20")
    colours = {m: palette(i % 20) for i, m in enumerate(METHODS)} | {"noisy": "black"}
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 3.4), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        case_rows = [r for r in rows if r["case"] == case and r.get("psnr") is not None]
        for method in dict.fromkeys(r["method"] for r in case_rows):
            points = sorted((r["noise_level"], r["psnr"]) for r in case_rows if r["method"] == method)
            dashes = "--" if method == "noisy" else "-"
            ax.plot(*zip(*points, strict=True), marker="o", linestyle=dashes, label=method, color=colours.get(method))
        mr = bool(case_rows) and case_rows[0]["modality"] == "MR"
        ax.set_xlabel("Rician sigma (% of clean p99.9)" if mr else "soft-tissue noise target (HU)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(case, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = _save_figure(fig, out / "psnr_vs_noise.png")
    plt.close(fig)
    return path


def update_docs(report: BenchmarkReport, docs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Rewrite the part of ``docs/benchmarks.md`` between the benchmark markers; copy the figures.

    Figures go to ``docs/figures/``. The file is created with the markers when absent; text outside
    the markers is kept.
    """
    docs = Path(docs_dir) if docs_dir is not None else source_root() / "docs"
    (docs / "figures").mkdir(parents=True, exist_ok=True)
    for path in report.figures:
        shutil.copyfile(path, docs / "figures" / path.name)
    links = "\n".join(f"![{p.stem}](figures/{p.name})" for p in report.figures)
    section = f"{DOCS_START}\n{report.markdown}\n{links}\n{DOCS_END}"
    target = docs / "benchmarks.md"
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    if DOCS_START in text and DOCS_END in text:
        head, rest = text.split(DOCS_START, 1)
        text = head + section + rest.split(DOCS_END, 1)[1]
    else:
        intro = text or "# Benchmarks\n\nGenerated by `medidiff benchmark --update-docs`; see docs/evaluation.md.\n"
        text = intro.rstrip("\n") + "\n\n" + section + "\n"
    return write_text_atomic(target, text)
