"""Denoising whole scans: noise level -> start of the reverse process, sliding windows, ensembles.

The scan ``y`` is treated as the state of the diffusion at its own noise level ``sigma_y`` (EDM view,
DDM2): the reverse process starts from ``y`` itself. The network is told a multiple ``S`` of
``sigma_y`` (``network_sigma_scale``; 1.1 for MR: on brains it was not trained on, the bundled MR
model leaves less noise when told 10 % more, docs/design.md section 4); the steps after the network
keep ``sigma_y``. ``strength`` > 0 first re-noises the scan to ``S * sigma_y * (1 + strength)``
(SDEdit, Meng et al. 2022) for more smoothing. With ``steps=1`` the network's result is the
single-step posterior-mean estimate ``D(y, S * sigma_y)``.

The sampler runs on the whole volume; only the denoiser call is split into overlapping windows with
Gaussian blending (MONAI ``sliding_window_inference``), so noise drawn by stochastic samplers is one
whole-volume field, consistent across windows. Only the box around the signal is tiled, and
windows that hold only background are not sent through the network. The network runs in bf16 on
CUDA and on CPUs with native bf16 arithmetic (AMX or AVX512-BF16), in fp32 elsewhere; the volume
stays in CPU memory, so a volume larger than the GPU still stitches.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from medidiff import refine
from medidiff.errors import MedidiffError
from medidiff.volume import Volume

MIN_SIZE = 8
# deterministic steps by modality, chosen on the benchmark (docs/benchmarks.md): one step is as good
# as three on MR; on CT one step with a larger blend (below) matched or beat three steps with a tenth
# on the chest at 0.75-1.5 mm, in about 2/5 of the time (docs/design.md, section 4, "CT: one step")
DEFAULT_STEPS = {"MR": 1, "CT": 1}
DEFAULT_SAMPLER = "euler"
# guided averaging radius in voxels by modality (medidiff.refine: a ball, 203 voxels for MR, 123 for
# CT), on for both; measured in docs/design.md, section 4
DEFAULT_GUIDED_RADIUS = {"MR": refine.RADIUS, "CT": 3.0}
MAX_GUIDED_RADIUS = 5.0
# share of the input blended back into the output by modality: CT keeps 15 % of the scan, a light
# version of the blending with FBP that CT readers know; measured in docs/design.md, section 4
DEFAULT_BLEND = {"MR": 0.0, "CT": 0.15}
# the noise level the network is told, as a multiple of the estimate (or --sigma), by modality: on
# unseen brains the MR model removes more of the noise when told 10 % more; docs/design.md, section 4
DEFAULT_NETWORK_SIGMA_SCALE = {"MR": 1.1, "CT": 1.0}
# CT with finer pixels than the model was trained on (1.5-3 mm): the network takes part of the
# fine-grained noise for structure and keeps it; told more noise, it removes it. The CT default rises
# linearly from its value above at an in-plane pixel of 0.9 mm to 1.2 at 0.75 mm and below;
# docs/design.md, section 4, "The network's noise level"
CT_FINE_PIXEL_MM = (0.9, 0.75)  # in-plane pixel (mm) where the rise starts and where it ends
CT_FINE_PIXEL_SCALE = 1.2  # the CT network sigma scale at the end of the rise
CT_PADDING_BELOW = -1100.0  # HU: air is -1000; a noisy air voxel may lie lower, but not many at one exact value
CT_PADDING_MIN_SHARE = 0.001  # of the voxels, for the lowest value to count as padding
# noise left in the finest detail after guided averaging, as a fraction of sigma, by modality: detail
# no stronger than it is smoothed away (medidiff.refine.shrink_faint_detail); MR only, measured in
# docs/design.md, section 4 ("Faint detail")
DEFAULT_DETAIL_FLOOR = {"MR": 0.05, "CT": 0.0}
MAX_DETAIL_FLOOR = 1.0
NETWORK_SIGMA_SCALE_RANGE = (0.5, 2.0)
# Mirror images for --flips, in the order used: each pair after the first flips complementary axes.
MIRRORS: tuple[tuple[int, ...], ...] = ((), (0, 1, 2), (0,), (1, 2), (1,), (0, 2), (2,), (0, 1))
DEFAULT_STOCHASTIC_STEPS = 4
MAX_STEPS = 1000  # reverse-process steps: --steps of denoise and sample
CONTENT_MARGIN = 8  # voxels of background around the signal that still go through the network
WINDOW_EXTRA = 8  # default windows: the training patch size plus this many voxels
WINDOW_GROWTH = 16  # ... grown by at most this many voxels when fewer, larger windows cost less
GPU_BATCH_SIZE = 16  # windows per network call on a GPU when --batch-size is not given
# ... and on the CPU in fp32: with one window PyTorch sends the convolutions of small inputs (the
# coarser levels of the U-Net) to its slow im2col path instead of oneDNN, and two windows per call
# take every one to oneDNN. In bf16 (always oneDNN) two were slower, so bf16 keeps one.
# docs/benchmarks.md, "Two windows per call in fp32 on the CPU".
CPU_FP32_BATCH_SIZE = 2


def windows_per_call(batch_size: int | None, device: torch.device, precision: str = "fp32") -> int:
    """Windows per network call: ``batch_size`` when given, else ``GPU_BATCH_SIZE`` on a GPU and on the
    CPU ``CPU_FP32_BATCH_SIZE`` in fp32, 1 in bf16."""
    if batch_size:
        return batch_size
    if device.type == "cuda":
        return GPU_BATCH_SIZE
    return CPU_FP32_BATCH_SIZE if precision == "fp32" else 1


@dataclass(frozen=True)
class GuidedWeights:
    """Guided averaging's weights (``refine.guided_average``): range-kernel widths, times sigma.

    ``strength`` where the estimate is flat, rising by ``slope`` per sigma of its gradient per voxel
    to at most ``strength_max``; ``data_width`` for the local means of the scan.
    """

    strength: float
    slope: float
    strength_max: float
    data_width: float

    def kwargs(self) -> dict[str, float]:
        """The keyword arguments of ``refine.guided_average`` these stand for."""
        return {"strength": self.strength, "strength_slope": self.slope, "strength_max": self.strength_max,
                "data_width": self.data_width}


# by modality. On MR the range kernel widens on slopes and edges and narrows where the estimate is
# flat, and the local means' kernel is wider than the one the averaging was first tuned with (3
# against 2.5); docs/design.md, section 4, "A range kernel that widens on slopes". CT keeps one width.
GUIDED_WEIGHTS = {
    "MR": GuidedWeights(0.7, 0.15, 1.4, 3.0),
    "CT": GuidedWeights(refine.STRENGTH, 0.0, refine.STRENGTH, refine.DATA_WIDTH),
}


@dataclass(frozen=True)
class DenoiseOptions:
    """How to denoise. ``None`` means "the default for this model/modality".

    Attributes:
        sigma: noise std in the scan's own units (HU for CT); None estimates it.
        steps: steps along the reverse process (1: the single-step estimate); Heun evaluates the
            denoiser twice per step except the last. None: 1 (``DEFAULT_STEPS``),
            4 for the ancestral sampler.
        sampler: ``euler`` / ``heun`` (deterministic) or ``ancestral`` (stochastic).
        samples: number of runs averaged; > 1 also gives the voxelwise standard deviation.
        flips: number of mirror images of the scan (``MIRRORS``, 1-8) each run is made on and
            averaged over, flipped back (test-time self-ensemble: ``flips`` times the work).
        guided_radius: radius of the guided averaging of the noisy scan that follows the network
            (:mod:`medidiff.refine`), in voxels; 0 turns it off. None: 3.7 for MR, 3 for CT
            (``DEFAULT_GUIDED_RADIUS``).
        detail_floor: after guided averaging, the finest detail no stronger than this fraction of
            sigma is taken for left-over noise and smoothed away (``refine.shrink_faint_detail``;
            0-1, 0 turns it off). None: 0.05 for MR, 0 for CT (``DEFAULT_DETAIL_FLOOR``), and 0 when
            guided averaging is off.
        blend: share ``F`` of the input in the output, ``(1 - F) * denoised + F * input`` (0-1). None:
            0 for MR, 0.15 for CT (``DEFAULT_BLEND``).
        strength: extra re-noising before the reverse process, as a fraction of the network's sigma
            (SDEdit).
        network_sigma_scale: the network is told ``sigma`` times this (0.5-2); guided averaging and
            the reported sigma keep ``sigma``. None: 1.1 for MR, 1 for CT, rising to 1.2 for CT
            pixels of 0.75 mm and below (:func:`default_network_sigma_scale`).
        seed: seed of every random draw.
        roi_size: window size of the sliding-window inference (voxels); None: windows fitted to the
            box around the signal, close to the training patch plus 8 voxels (40 for the bundled models).
        overlap: overlap between windows, as a fraction of that base window (0.2: 8 voxels).
        batch_size: windows per network call; None: on the CPU 2 in fp32 (one window sends some
            fp32 convolutions to a slow path) and 1 in bf16; ``GPU_BATCH_SIZE`` on a GPU, where one
            window at a time leaves the card waiting on kernel launches.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 on CUDA and on CPUs with native bf16, else fp32), ``fp32`` or
            ``bf16`` for the network's arithmetic; the volume and the sampler stay in fp32.
    """

    sigma: float | None = None
    steps: int | None = None
    sampler: str | None = None
    samples: int = 1
    strength: float = 0.0
    seed: int = 0
    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.2
    batch_size: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    flips: int = 1
    guided_radius: float | None = None
    blend: float | None = None
    network_sigma_scale: float | None = None
    detail_floor: float | None = None

    @property
    def runs(self) -> int:
        """Runs averaged per volume: ``samples`` on each of ``flips`` mirror images."""
        return self.samples * self.flips

    def resolved(self, modality: str | None = None, spacing: tuple[float, ...] | None = None) -> DenoiseOptions:
        """Fill defaults (by ``modality``, MR when None; CT's network sigma scale also by ``spacing``, mm); validate.

        Raises:
            MedidiffError: naming the bad option.
        """
        from medidiff.sampling import SAMPLERS, STOCHASTIC

        guided = self.guided_radius
        if guided is None:
            guided = DEFAULT_GUIDED_RADIUS.get(modality or "MR", 0)
        if not (guided == 0 or 1 <= guided <= MAX_GUIDED_RADIUS):
            raise MedidiffError(
                f"--guided-radius must be 0 (off) or between 1 and {MAX_GUIDED_RADIUS:g} voxels, got {guided:g}"
            )
        floor = self.detail_floor
        if floor is None:  # the default measures what guided averaging leaves: none without it
            floor = DEFAULT_DETAIL_FLOOR.get(modality or "MR", 0.0) if guided else 0.0
        if not (math.isfinite(floor) and 0 <= floor <= MAX_DETAIL_FLOOR):
            raise MedidiffError(f"--detail-floor must lie in [0, {MAX_DETAIL_FLOOR:g}], got {floor:g}")
        blend = self.blend if self.blend is not None else DEFAULT_BLEND.get(modality or "MR", 0.0)
        if not 0 <= blend <= 1:
            raise MedidiffError(f"--blend must lie in [0, 1], got {blend}")
        scale = self.network_sigma_scale
        if scale is None:
            scale = default_network_sigma_scale(modality or "MR", spacing)
        low, high = NETWORK_SIGMA_SCALE_RANGE
        if not (math.isfinite(scale) and low <= scale <= high):
            raise MedidiffError(f"--network-sigma-scale must lie in [{low:g}, {high:g}], got {scale:g}")
        if self.samples < 1:
            raise MedidiffError(f"--samples must be at least 1, got {self.samples}")
        if not 1 <= self.flips <= len(MIRRORS):
            raise MedidiffError(f"--flips must be between 1 and {len(MIRRORS)}, got {self.flips}")
        sampler = self.sampler or ("ancestral" if self.samples > 1 else DEFAULT_SAMPLER)
        if sampler not in SAMPLERS:
            raise MedidiffError(f"--sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
        steps = (
            self.steps
            if self.steps is not None
            else (DEFAULT_STOCHASTIC_STEPS if sampler in STOCHASTIC else DEFAULT_STEPS.get(modality or "MR", 1))
        )
        if not 1 <= steps <= MAX_STEPS:
            raise MedidiffError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
        if self.samples > 1 and sampler not in STOCHASTIC and self.strength == 0:
            raise MedidiffError(
                f"--samples {self.samples} with the deterministic sampler {sampler!r} gives identical runs; "
                "use --sampler ancestral or --strength > 0"
            )
        if sampler in STOCHASTIC and steps < 2 and self.strength == 0 and self.samples > 1:
            raise MedidiffError("--sampler ancestral needs --steps 2 or more to draw different samples")
        if not 0 <= self.strength <= 10:
            raise MedidiffError(f"--strength must be between 0 and 10, got {self.strength}")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise MedidiffError(f"--sigma must be a positive number, got {self.sigma}")
        if not 0 <= self.overlap < 1:
            raise MedidiffError(f"--overlap must lie in [0, 1), got {self.overlap}")
        if self.roi_size is not None and (len(self.roi_size) != 3 or min(self.roi_size) < MIN_SIZE):
            raise MedidiffError(f"--roi-size needs three sizes of at least {MIN_SIZE}, got {self.roi_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise MedidiffError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:
            raise MedidiffError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MedidiffError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise MedidiffError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        return dataclasses.replace(
            self, sampler=sampler, steps=steps, guided_radius=guided, blend=blend, network_sigma_scale=scale,
            detail_floor=floor,
        )


def in_plane_pixel(spacing: tuple[float, ...]) -> float:
    """The in-plane pixel size of a scan, mm: the mean of its two finest voxel spacings."""
    finest = sorted(float(v) for v in spacing[:3])[:2]
    return sum(finest) / len(finest)


def default_network_sigma_scale(modality: str, spacing: tuple[float, ...] | None = None) -> float:
    """The network sigma scale by modality; for CT with ``spacing`` (mm), raised on fine pixels.

    CT: ``DEFAULT_NETWORK_SIGMA_SCALE["CT"]`` (1) at an in-plane pixel of ``CT_FINE_PIXEL_MM[0]``
    (0.9 mm) and above, ``CT_FINE_PIXEL_SCALE`` (1.2) at ``CT_FINE_PIXEL_MM[1]`` (0.75 mm) and
    below, linear between.
    """
    base = DEFAULT_NETWORK_SIGMA_SCALE.get(modality, 1.0)
    if modality != "CT" or spacing is None or len(spacing) < 2:
        return base
    start, end = CT_FINE_PIXEL_MM
    share = min(1.0, max(0.0, (start - in_plane_pixel(spacing)) / (start - end)))
    return base + (CT_FINE_PIXEL_SCALE - base) * share


@dataclass
class DenoiseResult:
    """Denoised volume (input units and geometry), optional uncertainty, and what was done."""

    volume: Volume
    uncertainty: Volume | None
    sigma: float
    info: dict[str, Any] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise MedidiffError("--device cuda asked for, but no CUDA device is available; use --device cpu")
        return torch.device("cuda")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16; /proc/cpuinfo, read once)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return bool({"amx_bf16", "avx512_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` -> bf16 where it is fast (CUDA, CPUs with native bf16), else fp32."""
    if precision in ("fp32", "bf16"):
        return "fp32" if precision == "fp32" else "bf16"
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def check_memory(
    shape: tuple[int, ...], copies: int = 8, remedy: str = "crop the scan or run on a machine with more memory"
) -> None:
    """Refuse before starting when ``copies`` float32 volumes of ``shape`` cannot fit in free RAM."""
    need = int(np.prod(shape)) * 4 * copies
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > free:
        raise MedidiffError(
            f"volume {shape} needs about {need / 2**30:.1f} GiB of memory but {free / 2**30:.1f} GiB is free; "
            f"{remedy}"
        )


def ct_padding(data: np.ndarray, finite: np.ndarray) -> np.ndarray | None:
    """Where a CT holds the padding scanners store outside the reconstruction circle, or None.

    Padding is the volume's lowest value, below ``CT_PADDING_BELOW`` HU (no tissue or air lies
    there; -3024 and -2048 are common) and held by at least ``CT_PADDING_MIN_SHARE`` of the voxels.
    It is filled with air for the noise estimate and the network and put back unchanged afterwards:
    left in, it cost up to 0.15 dB inside the circle (docs/benchmarks.md, "CT padding outside the
    field of view").
    """
    values = data[finite]
    low = values.min() if values.size else None
    if low is None or not float(low) < CT_PADDING_BELOW:
        return None
    padding = finite & (data == low)
    return padding if padding.sum() >= CT_PADDING_MIN_SHARE * data.size else None


def _fill_value(modality: str) -> float:
    return -1000.0 if modality == "CT" else 0.0


def _window_for(size: int, n: int, margin: float, factor: int) -> int:
    """The smallest multiple of ``factor`` of which ``n`` windows cover ``size`` voxels, ``margin`` overlapping."""
    return max(factor, -(-int(round((size + (n - 1) * margin) / n)) // factor) * factor)


def fit_windows(
    shape: tuple[int, ...], base: tuple[int, ...], overlap: float, factor: int
) -> tuple[int, int, int]:
    """Window size per axis that tiles ``shape`` with about ``overlap * base`` voxels of overlap.

    MONAI places fixed-size windows and moves the last one back to the border, so a 181-voxel axis
    with 64-voxel windows needs 4 windows (256 voxels of work); 3 windows of 72 cover it with less.
    With ``n`` windows an axis needs windows of the smallest multiple of ``factor`` that covers it
    with the requested overlap. ``n = ceil(size / base)`` is tried first, then fewer windows as long
    as they stay within ``WINDOW_GROWTH`` voxels of ``base``; the count with the least work
    (``n x window``) wins, the smaller windows on a tie. A 163-voxel axis with base 40 gets 4
    windows of 48 (192 voxels of work) rather than 5 of 40 (200).
    """
    roi = []
    for size, b in zip(shape, base, strict=True):
        margin = overlap * b
        first = max(1, -(-size // b))
        best_n, best_r = first, _window_for(size, first, margin, factor)
        for n in range(first - 1, 0, -1):
            r = _window_for(size, n, margin, factor)
            if r > b + WINDOW_GROWTH:
                break
            if n * r < best_n * best_r:
                best_n, best_r = n, r
        roi.append(best_r)
    return (roi[0], roi[1], roi[2])


def content_mask(y: np.ndarray, threshold: float, margin: int = CONTENT_MARGIN) -> np.ndarray:
    """Voxels within ``margin`` voxels of signal, as uint8.

    Signal is where at least a fifth of a 5-voxel box exceeds ``threshold``: a connected structure,
    not the isolated exceedances that the Rayleigh tail of an MR background or CT streaks give.
    A window without a single such voxel holds background only and skips the network; one that
    touches the dilated signal, however little, is denoised, so no sliver of tissue at a window's
    edge is ever replaced by the background fill.
    """
    from scipy import ndimage

    dense = ndimage.uniform_filter((y > threshold).astype(np.float32), size=5, mode="constant") >= 0.2
    return ndimage.maximum_filter(dense.astype(np.uint8), size=2 * margin + 1, mode="constant")


def content_box(content: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of a :func:`content_mask` (the whole volume when it holds no signal)."""
    if not content.any():
        return (slice(0, content.shape[0]), slice(0, content.shape[1]), slice(0, content.shape[2]))
    spans = []
    for axis in range(3):
        hits = np.flatnonzero(content.any(axis=tuple(a for a in range(3) if a != axis)))
        spans.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return (spans[0], spans[1], spans[2])


def _grow_box(box: tuple[slice, ...], roi: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """``box`` grown, within the volume, to at least one window per axis (no zero padding where avoidable)."""
    out = []
    for s, r, n in zip(box, roi, shape, strict=True):
        need = max(0, min(r, n) - (s.stop - s.start))
        start = max(0, min(s.start - need // 2, n - max(r, s.stop - s.start)))
        out.append(slice(start, min(n, max(s.stop, start + min(r, n)))))
    return (out[0], out[1], out[2])


def window_base(patch_size: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """The window size the default windows are fitted around: the training patch plus the overlap.

    GroupNorm normalizes each window with its own statistics, so windows close to the training
    patch size give the statistics the network learned with (docs/benchmarks.md, window size).
    """
    return tuple(int(p) + WINDOW_EXTRA for p in patch_size)


def _unet_factor(loaded: Any) -> int:
    return int(2 ** (len(loaded.config.model.channels) - 1))


def _window_size(
    box: tuple[slice, ...], shape: tuple[int, ...], opts: DenoiseOptions, base: tuple[int, ...], factor: int
) -> tuple[int, int, int]:
    """The window: ``--roi-size`` or windows fitted to the box, never larger than needed to cover it."""
    extent = tuple(s.stop - s.start for s in box)
    roi = opts.roi_size or fit_windows(extent, base, opts.overlap, factor)
    # a window larger than the box would be zero-padded: shrink it to the smallest that covers the box
    out = tuple(min(r, -(-e // factor) * factor) for r, e in zip(roi, extent, strict=True))
    return (out[0], out[1], out[2])


class _RunningMoments:
    """Mean and population std of equally shaped arrays added one at a time (Welford's update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray = np.zeros(0, np.float32)
        self._m2: np.ndarray | None = None

    def add(self, run: np.ndarray) -> None:
        self.n += 1
        if self.n == 1:
            self.mean = run.astype(np.float32, copy=True)
            return
        if self._m2 is None:
            self._m2 = np.zeros_like(self.mean)
        delta = run - self.mean
        self.mean += delta / self.n
        after = run - self.mean
        after *= delta
        self._m2 += after

    @property
    def std(self) -> np.ndarray:
        return np.zeros_like(self.mean) if self._m2 is None else np.sqrt(self._m2 / self.n)


class _WindowedDenoiser:
    """``D(x, sigma)`` over a whole (1, 1, X, Y, Z) volume via Gaussian-blended sliding windows.

    ``content`` (a :func:`content_mask` of the scan) travels with ``x`` as a second channel, so each
    window knows whether it holds any signal; windows without are filled with the background value.
    """

    def __init__(
        self, model: Any, opts: DenoiseOptions, device: torch.device, modality: str, content: np.ndarray,
        roi: tuple[int, int, int], base: tuple[int, ...],
    ) -> None:
        self.model, self.opts, self.device, self.modality, self.roi = model, opts, device, modality, roi
        # only the box around the signal goes through the windows; the rest is background fill
        self.box = _grow_box(content_box(content), roi, content.shape)
        # the same overlap in voxels whatever each axis' window size: overlap x the base window
        self.overlap = tuple(min(0.5, opts.overlap * b / r) for b, r in zip(base, roi, strict=True))
        self.content = torch.from_numpy(content[self.box].astype(np.float32))[None, None]
        self.batch_size = windows_per_call(opts.batch_size, device, opts.precision)
        self.windows = 0
        self.skipped = 0

    def _predict(self, both: torch.Tensor, sigma: float) -> torch.Tensor:
        patches = both[:, :1]
        content = both[:, 1].flatten(1).amax(dim=1) > 0
        out = torch.empty_like(patches)
        background = ~content
        if background.any():
            fill = (
                patches[background].flatten(1).mean(dim=1)
                if self.modality == "CT"
                else torch.zeros(int(background.sum()), device=patches.device, dtype=patches.dtype)
            )
            out[background] = fill.view(-1, 1, 1, 1, 1).expand_as(patches[background])
        self.windows += patches.shape[0]
        self.skipped += int(background.sum())
        if content.any():
            batch = patches[content].to(self.device).contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.opts.precision == "bf16"):
                den = self.model(batch, sigma)
            out[content] = den.float().to(out.device)
        return out

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        box = (slice(None), slice(None), *self.box)
        with torch.inference_mode():
            inside = sliding_window_inference(
                torch.cat([x[box], self.content], dim=1),
                roi_size=self.roi,
                sw_batch_size=self.batch_size,
                predictor=lambda p: self._predict(p, sigma),
                overlap=self.overlap,
                mode="gaussian",
                sw_device=self.device,
                device=torch.device("cpu"),
                progress=False,
            )
        assert isinstance(inside, torch.Tensor)
        if inside.shape == x.shape:
            return inside
        outside = torch.ones_like(x, dtype=torch.bool)
        outside[box] = False
        fill = float(x[outside].mean()) if self.modality == "CT" else 0.0
        out = torch.full_like(x, fill)
        out[box] = inside
        return out


def _checked_modality(modality: Any) -> str:
    """``MR`` or ``CT`` from a modality given in any case; anything else is a MedidiffError."""
    value = modality.upper() if isinstance(modality, str) else modality
    if value not in ("MR", "CT"):
        raise MedidiffError(f"modality (--modality) must be MR or CT, got {modality!r}")
    return str(value)


class Denoiser:
    """Keeps models loaded for many calls.

    Args:
        model: a bundled name (``mr``, ``ct``), a run folder or an exported ``.safetensors`` file;
            None picks the bundled model for each scan's modality.
        device: ``auto``, ``cpu`` or ``cuda``.
        reuse_memory: let glibc's malloc keep freed memory for the next window batch
            (:func:`medidiff.allocator.keep_freed_memory`, process-wide; up to a quarter less time
            for a fresh process's first call on a CPU). False leaves the process's allocator as it is.
    """

    def __init__(
        self, model: str | os.PathLike[str] | None = None, device: str = "auto", *, reuse_memory: bool = True
    ) -> None:
        if reuse_memory:
            from medidiff.allocator import keep_freed_memory

            keep_freed_memory()
        self.model_spec = model
        self.device = pick_device(device)
        self._loaded: dict[str | None, Any] = {}

    def load(self, modality: str) -> None:
        """Load the model for ``modality`` (``MR`` or ``CT``) now rather than on the first call.

        Loading builds MONAI's U-Net (importing MONAI, about a second on a CPU) and reads the weights;
        a pipeline or a timing that should not pay for it inside its first call loads first.
        """
        self._model_for(_checked_modality(modality))

    def _model_for(self, modality: str) -> Any:
        from medidiff.checkpoint import load_model

        key = None if self.model_spec is not None else modality
        if key not in self._loaded:
            loaded = load_model(self.model_spec, modality)
            loaded.denoiser.to(self.device)
            loaded.denoiser.net.to(memory_format=torch.channels_last_3d)  # faster convolutions on GPU and CPU
            self._loaded[key] = loaded
        return self._loaded[key]

    def denoise(
        self, x: Any, *, affine: np.ndarray | None = None, modality: str | None = None, **options: Any
    ) -> Any:
        """Denoise ``x`` and return the same kind of object.

        ``x`` may be a path (read with :func:`medidiff.io.read_volume`; a :class:`Volume` is returned,
        write it with :func:`medidiff.io.write_volume`), a NumPy array ``(X, Y, Z)`` or ``(X, Y, Z, T)``
        (with optional ``affine``), a nibabel image, a MONAI ``MetaTensor`` or a :class:`Volume`.
        Floating-point arrays and tensors keep their dtype; integer ones come back float32 (the
        denoised values are not integers). Options are those of :class:`DenoiseOptions`;
        :meth:`denoise_volume` also returns the sidecar's information.
        """
        if isinstance(x, Volume):
            return self.denoise_volume(x, modality=modality, **options).volume
        if isinstance(x, (str, os.PathLike)):
            from medidiff.io import read_volume

            return self.denoise_volume(read_volume(x), modality=modality, **options).volume
        if isinstance(x, np.ndarray):
            vol = Volume.from_array(x, affine)
            out = self.denoise_volume(vol, modality=modality, **options).volume.to_array()
            return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out
        if type(x).__name__ == "MetaTensor":
            vol = Volume.from_metatensor(x)
            out_vol = self.denoise_volume(vol, modality=modality, **options).volume
            result = x.clone()
            # a float tensor keeps its dtype; an integer one comes back float32, never cut to integers
            dtype = x.dtype if x.dtype.is_floating_point else torch.float32
            result.data = torch.as_tensor(out_vol.data.reshape(tuple(x.shape)), dtype=dtype)
            return result
        if hasattr(x, "affine") and hasattr(x, "get_fdata"):
            import nibabel as nib

            vol = Volume.from_array(np.asarray(x.get_fdata(dtype=np.float32)), np.asarray(x.affine))
            out = self.denoise_volume(vol, modality=modality, **options).volume.to_array()
            header = x.header.copy()
            header.set_data_dtype(np.float32)
            kind = type(x) if isinstance(x, nib.spatialimages.SpatialImage) else nib.Nifti1Image
            return kind(out, x.affine, header)  # the image class it was given (NIfTI-2 stays NIfTI-2)
        raise MedidiffError(
            f"cannot denoise an object of type {type(x).__name__}; give a path, a NumPy array, a nibabel image, "
            "a MONAI MetaTensor or a medidiff Volume"
        )

    def denoise_volume(self, volume: Volume, modality: str | None = None, **options: Any) -> DenoiseResult:
        """Denoise every 3D volume of ``volume``; keyword options as in :class:`DenoiseOptions`."""
        from medidiff.io import guess_modality

        opts = DenoiseOptions(**{k: v for k, v in options.items() if v is not None or k == "sigma"})
        if modality is not None:
            modality = _checked_modality(modality)
        modality = modality or volume.meta.modality or guess_modality(volume)
        opts = dataclasses.replace(opts, device="cuda" if self.device.type == "cuda" else "cpu").resolved(
            modality, volume.meta.spacing
        )
        opts = dataclasses.replace(opts, precision=resolve_precision(opts.precision, self.device))
        if min(volume.spatial_shape) < MIN_SIZE:
            raise MedidiffError(
                f"{volume.meta.source_path or 'input'}: shape {volume.spatial_shape} has an axis shorter than "
                f"{MIN_SIZE} voxels (a 2D image, a thin slab or a very small crop); medidiff denoises 3D volumes"
            )
        # runs > 1: the running mean and M2 and their update's temporaries; flips: the mirrored input and
        # output; guided averaging: padded copies of the scan, its local means and the estimate, its output and
        # the range-kernel width per voxel
        copies = 8 + (3 if opts.runs > 1 else 0) + (2 if opts.flips > 1 else 0) + (5 if opts.guided_radius else 0)
        check_memory(volume.spatial_shape, copies=copies)
        loaded = self._model_for(modality)
        factor = _unet_factor(loaded)
        if opts.roi_size is not None and any(r % factor for r in opts.roi_size):
            raise MedidiffError(
                f"--roi-size {list(opts.roi_size)} must be divisible by {factor} for this model's U-Net"
            )
        started = time.perf_counter()
        outputs, spreads, sigmas, notes = [], [], [], []
        stats: dict[str, Any] = {"windows": 0, "skipped_windows": 0}
        for c in range(volume.n_volumes):
            try:
                mean, spread, sigma, note = self._denoise_3d(volume.data[c], modality, loaded, opts, stats,
                                                             volume.meta.spacing)
            except MedidiffError as exc:
                if volume.n_volumes > 1:  # say which volume of a 4D series is at fault
                    exc.args = (f"volume {c} of {volume.n_volumes} (counted from 0): {exc}",)
                raise
            outputs.append(mean)
            spreads.append(spread)
            sigmas.append(sigma)
            if note:
                notes.append(f"volume {c}: {note}")
        denoised = volume.with_data(np.stack(outputs))
        uncertainty = volume.with_data(np.stack(spreads)) if opts.runs > 1 else None
        info = {
            "model": loaded.name,
            "model_sha256": loaded.sha256,
            "modality": modality,
            "sigma": sigmas[0] if len(sigmas) == 1 else sigmas,
            "steps": opts.steps,
            "sampler": opts.sampler,
            "samples": opts.samples,
            "flips": opts.flips,
            "guided_radius": opts.guided_radius,
            "detail_floor": opts.detail_floor,
            "blend": opts.blend,
            "network_sigma_scale": opts.network_sigma_scale,
            "strength": opts.strength,
            "seed": opts.seed,
            "roi_size": stats.pop("roi_size", None),  # None when no volume needed the network
            "box": stats.pop("box", None),
            "overlap": opts.overlap,
            "batch_size": windows_per_call(opts.batch_size, self.device, opts.precision),
            "device": str(self.device),
            "precision": opts.precision,
            "wall_time_s": round(time.perf_counter() - started, 3),
            **stats,
            "notes": notes,
        }
        return DenoiseResult(denoised, uncertainty, float(np.mean(sigmas)), info)

    def _denoise_3d(
        self, data: np.ndarray, modality: str, loaded: Any, opts: DenoiseOptions, stats: dict[str, Any],
        spacing: tuple[float, float, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, float, str]:
        from medidiff.noise import estimate_sigma
        from medidiff.sampling import get_sampler, randn_like
        from medidiff.schedule import KarrasSchedule
        from medidiff.transforms import MR_MAX_NEGATIVE_SHARE, fit_normalization, negative_share

        finite = np.isfinite(data)
        if not finite.any():
            raise MedidiffError("the volume holds no finite value (all NaN or Inf); nothing to denoise")
        padding = ct_padding(data, finite) if modality == "CT" else None
        valid = finite if padding is None else finite & ~padding
        filled = np.where(valid, data, _fill_value(modality)).astype(np.float32)
        if float(filled.max()) == float(filled.min()):
            return data.copy(), np.zeros_like(data), 0.0, "constant volume returned unchanged"
        if modality == "MR" and np.count_nonzero(filled > 0) < 0.001 * filled.size:
            # MR windows without positive signal are background and come back as zeros: refuse
            # rather than blank a volume that is not a magnitude image (phase, subtraction, HU...)
            raise MedidiffError(
                "an MR volume with (almost) no positive intensities is not a magnitude image; "
                "medidiff denoises MR magnitude and CT in HU (pass --modality CT for CT)"
            )
        negative = negative_share(filled)
        if modality == "MR" and negative > MR_MAX_NEGATIVE_SHARE:
            # magnitude images are never negative: clipping a z-scored or mean-centred scan at 0 would
            # flatten it, so refuse (a few negatives, from interpolation ringing, are clipped)
            raise MedidiffError(
                f"{negative:.1%} of this MR volume's voxels are negative (more than 5 %), which a magnitude "
                "image cannot be (normalized or mean-centred?); denoise the scan before normalizing it, "
                "or pass --modality CT if it is CT in HU"
            )
        norm = fit_normalization(filled, modality)  # type: ignore[arg-type]
        sigma_units = opts.sigma if opts.sigma is not None else estimate_sigma(filled, modality)  # type: ignore[arg-type]
        cfg = loaded.config
        sigma_y = max(float(sigma_units) / norm.scale, cfg.schedule.sigma_min)
        schedule = KarrasSchedule(cfg.schedule.sigma_min, cfg.schedule.sigma_max, cfg.schedule.rho)
        sigma_net = sigma_y * float(opts.network_sigma_scale or 1.0)  # the noise level the network is told
        sigma_start = sigma_net * (1.0 + opts.strength)
        sigmas = schedule.sigmas(int(opts.steps or 1), sigma_start)
        sampler = get_sampler(str(opts.sampler))
        y = torch.from_numpy(norm.normalize(filled))[None, None]
        content = content_mask(y[0, 0].numpy(), max(0.05, 5.0 * sigma_y))
        base = window_base(cfg.data.patch_size)
        extent = content_box(content)
        roi = _window_size(extent, content.shape, opts, base, _unet_factor(loaded))
        runs = _RunningMoments()  # memory stays flat however many runs are averaged
        for axes in MIRRORS[: opts.flips]:  # each mirror image is denoised, then flipped back
            dims = [a + 2 for a in axes]
            y_m = torch.flip(y, dims) if axes else y
            content_m = np.ascontiguousarray(np.flip(content, axes)) if axes else content
            windowed = _WindowedDenoiser(loaded.denoiser, opts, self.device, modality, content_m, roi, base)
            stats.setdefault("roi_size", list(roi))
            stats.setdefault("box", [[s.start, s.stop] for s in windowed.box])
            for k in range(opts.samples):
                g = torch.Generator().manual_seed(opts.seed + k)
                x = y_m
                if sigma_start > sigma_net:  # SDEdit: real noise up to the start
                    x = y_m + randn_like(y_m, g) * math.sqrt(sigma_start**2 - sigma_net**2)
                out = sampler(windowed, x, sigmas, generator=g)
                runs.add((torch.flip(out, dims) if axes else out)[0, 0].numpy())
            stats["windows"] += windowed.windows
            stats["skipped_windows"] += windowed.skipped
        mean = runs.mean
        box = _grow_box(extent, roi, content.shape)  # the unmirrored windows' box
        # guided averaging and the detail step are round in millimetres (medidiff.refine.voxel_scale)
        if opts.guided_radius:  # a second look at the scan, steered by the estimate (medidiff.refine)
            mean[box] = refine.guided_average(
                y[0, 0].numpy()[box], mean[box], sigma_y, rician=modality == "MR", radius=opts.guided_radius,
                spacing=spacing, device=self.device, **GUIDED_WEIGHTS[modality].kwargs(),
            )
        if opts.detail_floor:  # the faint detail left is mostly noise: smooth it away
            mean[box] = refine.shrink_faint_detail(mean[box], sigma_y, opts.detail_floor, spacing=spacing,
                                                   device=self.device)
        if opts.blend:  # a share of the input back in
            mean = (1.0 - opts.blend) * mean + opts.blend * y[0, 0].numpy()
        mean = norm.denormalize(mean)
        spread = runs.std * (norm.scale * (1.0 - (opts.blend or 0.0)))
        mean = np.where(valid, mean, data)  # NaN/Inf and padding stay where they were
        note = ""
        if padding is not None:
            note = f"{int(padding.sum())} voxels of padding ({float(data[padding][0]):g} HU) kept as they were"
        return mean.astype(np.float32), spread.astype(np.float32), float(sigma_y * norm.scale), note


_DEFAULT: dict[str, Denoiser] = {}


def denoise(
    x: Any,
    *,
    affine: np.ndarray | None = None,
    model: str | None = None,
    device: str = "auto",
    modality: str | None = None,
    **options: Any,
) -> Any:
    """Denoise ``x`` and return the same kind of object (:meth:`Denoiser.denoise`, with a model kept
    loaded between calls for each ``model`` and ``device``)."""
    key = f"{model}|{device}"
    den = _DEFAULT.get(key)
    if den is None:
        den = _DEFAULT[key] = Denoiser(model=model, device=device)
    return den.denoise(x, affine=affine, modality=modality, **options)
