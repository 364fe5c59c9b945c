"""The generative path of the same model: new volumes drawn from pure noise (to inspect a model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def sample_prior(
    output: str,
    model: str | None = None,
    modality: str = "MR",
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: float = 1.5,
    steps: int = 40,
    sampler: str = "heun",
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
) -> Path:
    """Run the reverse process from ``sigma_max`` noise to 0 and write the result as NIfTI.

    Intensities are normalized units mapped back with the modality's nominal scale (MR: 0..1,
    CT: HU). Sizes must be divisible by 2 ** (levels - 1) of the U-Net.
    """
    from medidiff.checkpoint import load_model
    from medidiff.errors import MedidiffError
    from medidiff.inference import MAX_STEPS, check_memory, pick_device
    from medidiff.io import check_nifti_output, write_volume
    from medidiff.sampling import get_sampler
    from medidiff.schedule import KarrasSchedule
    from medidiff.transforms import CT_HIGH, CT_LOW
    from medidiff.volume import Volume

    check_nifti_output(output, force)  # before the model loads and the sampling runs
    if not 1 <= steps <= MAX_STEPS:
        raise MedidiffError(f"--steps must be between 1 and {MAX_STEPS}, got {steps}")
    dev = pick_device(device)
    loaded = load_model(model, modality)
    cfg = loaded.config
    factor = 2 ** (len(cfg.model.channels) - 1)
    if any(s % factor for s in shape):
        raise MedidiffError(f"--shape {list(shape)} must be divisible by {factor} for this model")
    # the whole volume goes through the network at once: a few full-resolution feature maps
    check_memory(shape, copies=8 + 4 * cfg.model.channels[0],
                 remedy="ask for a smaller --shape or run on a machine with more memory")
    den = loaded.denoiser.to(dev)
    schedule = KarrasSchedule(cfg.schedule.sigma_min, cfg.schedule.sigma_max, cfg.schedule.rho)
    sigmas = schedule.sigmas(steps, device=dev)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, *shape), generator=g).to(dev) * float(sigmas[0])
    with torch.inference_mode():
        out = get_sampler(sampler)(lambda v, s: den(v, s), x, sigmas, generator=g)[0, 0].float().cpu().numpy()
    if cfg.data.modality == "CT":
        out = out * (CT_HIGH - CT_LOW) + CT_LOW
    affine = np.diag([spacing, spacing, spacing, 1.0])
    vol = Volume.from_array(out.astype(np.float32), affine, modality=cfg.data.modality)
    return write_volume(vol, output, force=force)
