"""The training loop: EDM loss on noisy patches, AdamW, EMA, bf16 on CUDA, checkpoints, resume, DDP.

Run with ``medidiff train --config configs/mri.yaml`` on one device, or unchanged under
``torchrun --nproc_per_node N -m medidiff train ...``: each rank draws its own slice of the global
sample stream (see :mod:`medidiff.data`), gradients are averaged by DDP, and rank 0 alone writes.
Checkpoints are written every ``train.save_every`` steps, at the end, and when SIGTERM or SIGINT
arrives (cluster preemption), so a killed run resumes with ``--resume RUN`` losing at most the steps
since the last save. Randomness depends only on (seed, step, rank), so a resumed run continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medidiff.config import Config, TrainConfig, load_config, save_config
from medidiff.errors import ConfigError, MedidiffError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    last_loss: float | None
    signum: int | None = None


# ---------------------------------------------------------------- distributed helpers


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available; use auto or cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# ---------------------------------------------------------------- noise levels and batches


def draw_sigmas(cfg: Config, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (B,), is_scan_noise (B,) bool): log-uniform levels in the scan range with the scan's
    noise model, otherwise over the whole schedule range with Gaussian noise."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    scan = torch.rand(batch, generator=generator) < cfg.noise.scan_fraction
    lo = torch.where(scan, math.log(cfg.noise.scan_sigma_min), math.log(cfg.schedule.sigma_min))
    hi = torch.where(scan, math.log(cfg.noise.scan_sigma_max), math.log(cfg.schedule.sigma_max))
    return torch.exp(lo + u * (hi - lo)).float(), scan


def make_noisy(
    cfg: Config, x0: torch.Tensor, sigma: torch.Tensor, scan: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Noisy versions of the clean patches ``x0`` (B, 1, X, Y, Z), generated on the CPU for replay."""
    from medidiff.noise import add_noise

    s = sigma.view(-1, 1, 1, 1, 1)
    ramp_lo, ramp_hi = cfg.noise.ct_ramp  # two entries, checked when the config loads
    realistic = add_noise(x0, s, cfg.noise.kind, generator, ct_ramp=(ramp_lo, ramp_hi))
    gaussian = add_noise(x0, s, "gaussian", generator)
    return torch.where(scan.view(-1, 1, 1, 1, 1), realistic, gaussian)


def edm_loss_per_sample(
    out: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor, x0: torch.Tensor, noisy: torch.Tensor
) -> torch.Tensor:
    """Each sample's EDM loss (B,): the mean over its voxels of what ``Preconditioned.loss`` averages."""
    return ((out.float() - ((x0 - c_skip * noisy) / c_out).float()) ** 2).flatten(1).mean(1)


def guided_loss(
    model: Any, cfg: Config, x0: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor, scan: torch.Tensor
) -> torch.Tensor:
    """The EDM loss, plus ``train.guided_loss_weight`` x the error of guided averaging steered by the estimate.

    Samples with the scan's noise model (``scan``) are denoised as ``medidiff denoise`` does in one
    step (the default; CT's also blends in the input, which this leaves out): the
    network is told the modality's ``network_sigma_scale`` x sigma, and guided averaging
    (:func:`medidiff.refine.guided_average_batch`, the modality's default radius) then averages the
    noisy patch with weights from that estimate. Their loss is the EDM loss at the level told plus
    the weighted squared error of the averaged patch (its interior: ``radius`` voxels in from each
    face), both per voxel and divided by ``c_out^2`` as the EDM loss is. Other samples keep the plain
    EDM loss.
    """
    from medidiff.inference import DEFAULT_GUIDED_RADIUS, DEFAULT_NETWORK_SIGMA_SCALE
    from medidiff.refine import guided_average_batch

    modality = cfg.data.modality
    told = torch.where(scan, sigma * DEFAULT_NETWORK_SIGMA_SCALE[modality], sigma)
    out, c_skip, c_out = model.raw(noisy, told)
    estimate = c_skip * noisy + c_out * out
    per_sample = edm_loss_per_sample(out, c_skip, c_out, x0, noisy)
    if bool(scan.any()):
        radius = DEFAULT_GUIDED_RADIUS[modality]
        averaged = guided_average_batch(
            noisy[scan].float(), estimate[scan].float(), sigma[scan], rician=cfg.noise.kind == "rician", radius=radius
        )  # fmt: skip
        inner = (slice(None), slice(None)) + (slice(math.ceil(radius), -math.ceil(radius)),) * 3
        error = ((averaged - x0[scan].float())[inner] ** 2).flatten(1).mean(1) / c_out[scan].flatten().float() ** 2
        per_sample = per_sample.index_add(0, scan.nonzero().flatten(), cfg.train.guided_loss_weight * error)
    return per_sample.mean()


SSIM_WINDOW = 7  # scikit-image's default window, the one the benchmark scores with
# K1, K2 of Wang et al. 2004 at a data range of 1: the benchmark's, in the model's units for MR (p99.9 = 1)
# and for CT ([-1000, 1000] HU onto [0, 1])
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def patch_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each pair of patches (B, 1, X, Y, Z), as scikit-image computes it.

    A uniform ``SSIM_WINDOW``-voxel window, sample (co)variances, data range 1, averaged over the
    windows that fit inside the patch (scikit-image crops the same border). Differentiable.
    """
    n = SSIM_WINDOW**3
    cov_norm = n / (n - 1)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool3d(t, SSIM_WINDOW, stride=1)

    mean_a, mean_b = local_mean(a), local_mean(b)
    var_a = cov_norm * (local_mean(a * a) - mean_a**2)
    var_b = cov_norm * (local_mean(b * b) - mean_b**2)
    cov = cov_norm * (local_mean(a * b) - mean_a * mean_b)
    ssim = ((2 * mean_a * mean_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mean_a**2 + mean_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    )
    return ssim.flatten(1).mean(1)


def ssim_loss(
    model: Any, cfg: Config, x0: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor, scan: torch.Tensor
) -> torch.Tensor:
    """The EDM loss, plus ``train.ssim_loss_weight`` x ``SSIM_C2 (1 - SSIM) / c_out^2`` on scan-noise samples.

    The posterior mean that the EDM loss asks for keeps some noise where tissue is flat, which SSIM
    punishes more than the squared error does. In flat tissue ``SSIM_C2 (1 - SSIM)`` is about the
    output's local variance, so the added term is on the EDM loss's scale and a weight of 1 about
    doubles what leftover noise there costs. Samples on the generative path (Gaussian noise over the
    whole schedule) keep the plain EDM loss; at scan levels the estimate is no longer exactly the
    posterior mean (docs/design.md, section 1).
    """
    out, c_skip, c_out = model.raw(noisy, sigma)
    per_sample = edm_loss_per_sample(out, c_skip, c_out, x0, noisy)
    if bool(scan.any()):
        estimate = (c_skip * noisy + c_out * out)[scan].float()
        ssim = patch_ssim(estimate, x0[scan].float())
        extra = SSIM_C2 * (1 - ssim) / c_out[scan].flatten().float() ** 2
        per_sample = per_sample.index_add(0, scan.nonzero().flatten(), cfg.train.ssim_loss_weight * extra)
    return per_sample.mean()


# ---------------------------------------------------------------- run folder bookkeeping


class MetricsLog:
    """``metrics.jsonl``: one JSON record per logged step; on resume, records past the checkpoint go."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:  # a new run (perhaps in the folder of one that stopped before a checkpoint)
            path.write_text("", encoding="utf-8")
        elif path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: leave SIGTERM and SIGINT to the main process.

    A scheduler stops a job by signalling its whole process group. A worker killed by that signal
    would make the main process fail before it could save its checkpoint; ignoring it, the worker
    keeps serving until the main process has saved and stops it (:func:`_end_workers`).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _batches(loader: Any) -> Iterator[Any]:
    """Iterate ``loader``; on every way out (the end, a stop, an error) end its workers (:func:`_end_workers`)."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        _end_workers(batches)


def _end_workers(batches: Any) -> None:
    """Stop the DataLoader's workers once the checkpoint is saved.

    PyTorch's own shutdown asks them to stop and waits; it would end a hung one with SIGTERM, which
    the workers ignore (:func:`_ignore_stop_signals`), so one still alive after it gets SIGKILL.
    ``_shutdown_workers`` is PyTorch's private method (present since 1.x; skipped if it goes).
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    for worker in getattr(batches, "_workers", []):
        if worker.is_alive():
            worker.kill()


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


# ---------------------------------------------------------------- validation


@torch.no_grad()
def validate(denoiser: Any, dataset: Any, cfg: Config, device: torch.device) -> dict[str, float]:
    """Single-step PSNR/SSIM (peak 1, normalized units) of ``denoiser`` on fixed validation patches."""
    from skimage.metrics import structural_similarity

    levels = [0.02, 0.05, 0.1]
    psnrs, ssims = [], []
    for i in range(cfg.data.val_patches):
        x0 = dataset.sample(i)["x0"][None]
        g = torch.Generator().manual_seed(10_000 + i)
        sigma = torch.tensor([levels[i % len(levels)]])
        noisy = make_noisy(cfg, x0, sigma, torch.tensor([True]), g)
        den = denoiser(noisy.to(device), sigma.to(device)).float().cpu()
        mse = float(((den - x0) ** 2).mean())
        psnrs.append(10 * math.log10(1.0 / max(mse, 1e-12)))
        ssims.append(float(structural_similarity(x0[0, 0].numpy(), den[0, 0].numpy(), data_range=1.0)))
    return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims))}


# ---------------------------------------------------------------- the loop


def learning_rate(train_cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (from 0): linear warm-up, then constant or cosine decay."""
    lr = train_cfg.lr * min(1.0, (step + 1) / max(1, train_cfg.lr_warmup_steps))
    if train_cfg.lr_schedule == "cosine":
        span = max(1, train_cfg.max_steps - train_cfg.lr_warmup_steps)
        progress = min(1.0, max(0.0, (step - train_cfg.lr_warmup_steps) / span))
        lr = train_cfg.lr_min + (lr - train_cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr


def start_from_model(model: Any, cfg: Config, spec: str) -> None:
    """Copy the weights of a trained model (a name, run folder or model file) into ``model``.

    The model's architecture and noise schedule must match the config's; everything else
    (data, noise, optimisation) may differ, which is what fine-tuning needs.
    """
    from medidiff.checkpoint import load_model

    try:
        source = load_model(spec)
    except MedidiffError as exc:
        raise ConfigError(f"train.init_weights: {exc}") from None
    # use_flash_attention picks a kernel and has no effect on the weights
    theirs = dataclasses.replace(source.config.model, use_flash_attention=cfg.model.use_flash_attention)
    if theirs != cfg.model or source.config.schedule != cfg.schedule:
        raise ConfigError(
            f"train.init_weights {spec}: its model.* or schedule.* settings differ from this config's; "
            "copy them from the model's config or start without init_weights"
        )
    model.net.load_state_dict(source.denoiser.net.state_dict())


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside a DistributedDataParallel wrapper (or the network itself)."""
    inner = getattr(net, "module", net)
    assert isinstance(inner, torch.nn.Module)
    return inner


def prepare_run(
    config_path: str | None, overrides: list[str], resume: str | None
) -> tuple[Config, Path, bool]:
    """Resolve the config and run folder; on resume, any key but ``model.*`` and ``schedule.*`` may change."""
    if resume:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a run folder (no config.yaml); give the folder a run wrote")
        old = load_config(run_dir / "config.yaml")
        cfg = load_config(run_dir / "config.yaml", overrides)
        if cfg.model != old.model or cfg.schedule != old.schedule:
            raise ConfigError("--resume cannot change model.* or schedule.* keys; start a new run instead")
        cfg = dataclasses.replace(cfg, output_dir=str(run_dir.resolve()))  # config.yaml keeps it absolute
        return cfg, run_dir, True
    cfg = load_config(config_path, overrides)
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir is empty; set it to the run folder, e.g. --set output_dir=runs/mine")
    run_dir = Path(cfg.output_dir).resolve()
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    if (run_dir / "checkpoints").exists():
        raise ConfigError(
            f"{run_dir}: holds a run already; continue it with --resume {run_dir} or pick output_dir"
        )
    if not cfg.data.train and not cfg.data.synthetic_phantoms:
        raise ConfigError("data.train is empty; set it in the config or with --set data.train=FOLDER")
    return cfg, run_dir, False


def train(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    resume: str | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train (or resume) a run. Returns when ``train.max_steps`` is reached or a signal arrives.

    glibc's malloc is told to keep freed memory for the next step (:mod:`medidiff.allocator`;
    about 18 % more steps per second on a 2-core CPU).
    """
    from medidiff.allocator import keep_freed_memory
    from medidiff.checkpoint import (
        build_denoiser,
        latest_checkpoint,
        load_checkpoint,
        restore_optimizer,
        save_checkpoint,
        split_weights,
    )
    from medidiff.data import IndexRange, PatchDataset

    cfg, run_dir, resuming = prepare_run(config_path, overrides or [], resume)
    keep_freed_memory()
    rank, world, local_rank = _dist_env()
    device = _pick_device(cfg.train.device, local_rank)
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0

    train_set = PatchDataset.from_config(cfg, "training")
    val_set = None
    if cfg.data.val and cfg.train.val_every > 0:
        val_set = PatchDataset.from_config(cfg, "validation")

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_denoiser(cfg).to(device)
    ema = copy.deepcopy(model.net).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    start_step = 0
    if cfg.train.init_weights and not resuming:
        start_from_model(model, cfg, cfg.train.init_weights)
        ema.load_state_dict(model.net.state_dict())
    if resuming:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError(f"{run_dir}: has no checkpoint to resume from; start a new run with --config")
        weights, opt_tensors, state = load_checkpoint(ckpt)
        try:
            model.net.load_state_dict(split_weights(weights, "model"))
            ema.load_state_dict(split_weights(weights, "ema"))
        except RuntimeError:  # missing or mis-shaped tensors: config.yaml was edited after training began
            raise ConfigError(
                f"{ckpt}: does not match the model in {run_dir / 'config.yaml'}; undo the edit to the "
                "model section, or start a new run with --config"
            ) from None
        restore_optimizer(optimizer, opt_tensors, state)
        start_step = int(state["step"])
        if cfg.train.max_steps <= start_step:  # nothing to train: leave the run as it is
            raise ConfigError(
                f"{run_dir}: is at step {start_step} already and train.max_steps is {cfg.train.max_steps}; "
                f"resume with --set train.max_steps=N, N above {start_step}"
            )
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        metrics = MetricsLog(run_dir / "metrics.jsonl", start_step if resuming else None)
        if train_set.skipped:
            log.warning("skipped %d unreadable training files", len(train_set.skipped))

    net: torch.nn.Module = model.net
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)
    model.net = net  # the wrapper calls the (possibly DDP-wrapped) net

    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        sampler=IndexRange(start_step, cfg.train.batch_size, rank, world),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        worker_init_fn=_ignore_stop_signals if cfg.data.num_workers > 0 else None,
    )
    use_bf16 = device.type == "cuda" and cfg.train.bf16
    show = progress if progress is not None else (is_main and sys.stderr.isatty())
    bar = _progress(cfg.train.max_steps, start_step, bool(show))
    step, last_loss, interrupted = start_step, None, False
    window_start, window_steps = time.perf_counter(), 0

    def save(at: int) -> None:
        if is_main:
            raw = _unwrap(net)
            save_checkpoint(
                run_dir, at, raw, ema, optimizer, {"config": "config.yaml"}, cfg.train.keep_checkpoints
            )

    with _StopFlag() as stop, _batches(loader) as batches:
        while step < cfg.train.max_steps:
            batch = next(batches)
            g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step * world + rank)
            x0 = batch["x0"]
            sigma, scan = draw_sigmas(cfg, x0.shape[0], g)
            if "noisy" in batch:  # real pairs: their own noise at its measured level, else synthetic
                real_sigma = (batch["noisy"] - x0).flatten(1).std(dim=1).clamp_min(cfg.schedule.sigma_min)
                use_real = scan.clone()
                noisy = make_noisy(cfg, x0, sigma, scan, g)
                noisy = torch.where(use_real.view(-1, 1, 1, 1, 1), batch["noisy"], noisy)
                sigma = torch.where(use_real, real_sigma, sigma)
            elif "own_sigma" in batch:  # the scan's own noise split between input and target
                from medidiff.noise import recorrupt

                rician = scan & (cfg.noise.kind == "rician")
                noisy, x0, sigma = recorrupt(x0, batch["own_sigma"], sigma, rician, g)
            else:
                noisy = make_noisy(cfg, x0, sigma, scan, g)
            x0, noisy, sigma = x0.to(device), noisy.to(device), sigma.to(device)
            if device.type == "cuda":
                x0 = x0.to(memory_format=torch.channels_last_3d)
                noisy = noisy.to(memory_format=torch.channels_last_3d)
            lr = learning_rate(cfg.train, step)
            for group in optimizer.param_groups:  # config wins over restored optimizer settings
                group["lr"] = lr
                group["weight_decay"] = cfg.train.weight_decay
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                if cfg.train.guided_loss_weight > 0:
                    loss = guided_loss(model, cfg, x0, noisy, sigma, scan.to(device))
                elif cfg.train.ssim_loss_weight > 0:
                    loss = ssim_loss(model, cfg, x0, noisy, sigma, scan.to(device))
                else:
                    loss = model.loss(x0, noisy, sigma)
            if not torch.isfinite(loss):
                again = (
                    "and resume from an earlier checkpoint, or start again"
                    if latest_checkpoint(run_dir) is not None
                    else "and start again (there is no checkpoint yet)"
                )
                raise ConfigError(  # a setting (most often the learning rate), not a bug: exit 2
                    f"training diverged: the loss became {float(loss.detach())} at step {step + 1}; lower train.lr "
                    + again
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
            optimizer.step()
            with torch.no_grad():
                raw = _unwrap(net)
                decay = min(cfg.train.ema_decay, (1 + step) / (10 + step))
                for e, p in zip(ema.parameters(), raw.parameters(), strict=True):
                    e.lerp_(p.detach(), 1.0 - decay)
            step += 1
            window_steps += 1
            last_loss = float(loss.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if is_main and (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):
                elapsed = time.perf_counter() - window_start
                record: dict[str, Any] = {
                    "step": step,
                    "loss": last_loss,
                    "lr": lr,
                    "steps_per_s": window_steps / max(elapsed, 1e-9),
                }
                if val_set is not None and step % cfg.train.val_every == 0:
                    was_net = model.net
                    model.net = ema
                    record.update(validate(model, val_set, cfg, device))
                    model.net = was_net
                metrics.write(record)
                if bar is None:
                    left = (cfg.train.max_steps - step) / max(record["steps_per_s"], 1e-9)
                    log.info(
                        "step %d/%d loss %.4f %.2f steps/s eta %.0fs",
                        step,
                        cfg.train.max_steps,
                        last_loss,
                        record["steps_per_s"],
                        left,
                    )
                window_start, window_steps = time.perf_counter(), 0
            stop_now = stop.signum is not None
            if distributed:
                import torch.distributed as dist

                flag = torch.tensor([1.0 if stop_now else 0.0], device=device)
                dist.all_reduce(flag)
                stop_now = bool(flag.item() > 0)
            if stop_now:
                interrupted = True
                save(step)
                break
            if step % cfg.train.save_every == 0 and step < cfg.train.max_steps:
                save(step)
        if not interrupted:
            save(step)
    if bar is not None:
        bar.close()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(run_dir=run_dir, step=step, interrupted=interrupted, last_loss=last_loss, signum=stop.signum)
