"""Noise schedules: immutable objects that return a decreasing tensor of noise levels ending in 0.

We use the continuous noise level of Karras et al. 2022 ("EDM"): the state at level ``sigma`` is the
clean volume plus noise of standard deviation ``sigma`` in normalized intensity units. A scan with
noise sigma_y *is* such a state, so denoising starts at ``sigma_y`` itself; no discrete timestep has
to be matched. Steps are spaced by EDM eq. 5, which packs them at low noise where scans live.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KarrasSchedule:
    """Noise levels ``sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` (EDM eq. 5).

    Attributes:
        sigma_min: the lowest non-zero level a sampler visits (normalized intensity units).
        sigma_max: the level of pure noise for generation from scratch.
        rho: spacing exponent; 7 as in EDM.
    """

    sigma_min: float = 0.002
    sigma_max: float = 5.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"rho must be positive, got {self.rho}")

    def sigmas(
        self, n_steps: int, sigma_start: float | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """``n_steps + 1`` levels from ``sigma_start`` (default ``sigma_max``) down to 0.

        ``n_steps`` counts denoiser evaluations of a first-order sampler: ``n_steps = 1`` gives
        ``[sigma_start, 0]``, the single-step posterior-mean estimate.
        """
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        start = self.sigma_max if sigma_start is None else float(sigma_start)
        if start <= 0:
            raise ValueError(f"sigma_start must be positive, got {start}")
        end = min(self.sigma_min, start)
        if n_steps == 1:
            levels = torch.tensor([start], dtype=torch.float64)
        else:
            ramp = torch.linspace(0, 1, n_steps, dtype=torch.float64)
            inv = 1.0 / self.rho
            levels = (start**inv + ramp * (end**inv - start**inv)) ** self.rho
        return torch.cat([levels, levels.new_zeros(1)]).to(device=device, dtype=torch.float32)
