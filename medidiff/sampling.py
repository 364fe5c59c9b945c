"""Samplers: pure functions ``sample(denoiser, x, sigmas, generator=None) -> x0``.

``denoiser(x, sigma)`` returns the clean estimate; ``sigmas`` decreases and ends in 0 (see
:mod:`medidiff.schedule`). The first level is where ``x`` already is: for denoising a scan, its
measured noise level (the scan is a partially noised state; DDM2, Xiang et al. 2023), for generation
``sigma_max`` with ``x`` pure noise. Samplers never see patches: whole-volume inference wraps the
denoiser instead. Equation numbers refer to Karras et al. 2022 (EDM).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DenoiserFn = Callable[[torch.Tensor, float], torch.Tensor]
Sampler = Callable[..., torch.Tensor]


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device then moved to ``x``'s."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


def _derivative(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    # the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 4 with s(t) = 1)
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(
    denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Deterministic first-order steps (DDIM-equivalent). One step to 0 is the posterior mean D(x, sigma)."""
    levels = sigmas.tolist()
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        denoised = denoiser(x, sigma)
        x = denoised if sigma_next == 0 else x + (sigma_next - sigma) * _derivative(x, denoised, sigma)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """EDM Algorithm 1: Euler step corrected by the trapezoidal rule (two evaluations per step but the last)."""
    levels = sigmas.tolist()
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        d = _derivative(x, denoised, sigma)
        x_euler = x + (sigma_next - sigma) * d
        d_next = _derivative(x_euler, denoiser(x_euler, sigma_next), sigma_next)
        x = x + (sigma_next - sigma) * 0.5 * (d + d_next)
    return x


@torch.no_grad()
def sample_ancestral(
    denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Stochastic Euler-ancestral steps: each step goes down to ``sigma_down`` and adds fresh noise
    of std ``sigma_up`` so the marginal level is ``sigma_next`` (the DDPM-like sampler)."""
    levels = sigmas.tolist()
    for sigma, sigma_next in zip(levels[:-1], levels[1:], strict=True):
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (sigma_down - sigma) * _derivative(x, denoised, sigma)
        x = x + randn_like(x, generator) * sigma_up
    return x


SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ancestral": sample_ancestral,
}
STOCHASTIC = frozenset({"ancestral"})


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
