"""The denoiser ``D(x, sigma) -> x0_hat``: EDM preconditioning around the raw U-Net, and its loss.

Karras et al. 2022, Table 1 (EDM column): with ``s = sigma`` and ``sd = sigma_data``

    D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))
    c_skip = sd^2 / (s^2 + sd^2),  c_out = s sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2)

and the loss ``|| F - (x0 - c_skip x) / c_out ||^2`` has unit weight on the network output at every
level (EDM eq. 8 with lambda = 1 / c_out^2). ``c_noise`` maps log(sigma) onto MONAI's timestep
range [0, 1000] so its sinusoidal embedding sees well-spread values.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Preconditioned(nn.Module):
    """Wraps a raw network ``F(x, t)`` into the denoiser ``D(x, sigma)``.

    Args:
        net: MONAI ``DiffusionModelUNet`` (or any ``net(x, timesteps)`` of the same shapes).
        sigma_data: expected std of clean data (normalized units).
        sigma_min, sigma_max: the range mapped onto timesteps 0..1000.
    """

    def __init__(self, net: nn.Module, sigma_data: float, sigma_min: float, sigma_max: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.log_min = math.log(sigma_min)
        self.log_max = math.log(sigma_max)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The continuous MONAI timestep for ``sigma`` (0 at sigma_min, 1000 at sigma_max)."""
        return 1000.0 * (torch.log(sigma) - self.log_min) / (self.log_max - self.log_min)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = 1.0 / torch.sqrt(sigma**2 + sd2)
        return c_skip, c_out, c_in

    def raw(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network output F and the scalings, for the loss. ``sigma`` has shape (B,)."""
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        c_skip, c_out, c_in = self.scalings(s)
        out = self.net(x * c_in, self.timestep(sigma.to(torch.float32)))
        return out.to(x.dtype), c_skip, c_out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Denoised estimate of ``x`` (B, 1, X, Y, Z) at noise level ``sigma`` (scalar or (B,))."""
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma_t.ndim == 0:
            sigma_t = sigma_t.expand(x.shape[0])
        out, c_skip, c_out = self.raw(x, sigma_t)
        return c_skip * x + c_out * out

    def loss(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Mean squared error of F against its target (EDM eq. 8, unit effective weight).

        Args:
            x0: clean patches (B, 1, X, Y, Z).
            x: the same patches with noise of level ``sigma`` (any noise model).
            sigma: (B,) noise levels.
        """
        out, c_skip, c_out = self.raw(x, sigma)
        target = (x0 - c_skip * x) / c_out
        return ((out.float() - target.float()) ** 2).mean()
