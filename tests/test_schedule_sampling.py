"""Pure functions: schedules, samplers with an oracle denoiser, EDM preconditioning."""

from __future__ import annotations

import math

import pytest
import torch

from medidiff.denoiser import Preconditioned
from medidiff.sampling import SAMPLERS, get_sampler
from medidiff.schedule import KarrasSchedule


def test_karras_sigmas_decrease_and_end_at_zero() -> None:
    sigmas = KarrasSchedule(0.002, 5.0, 7.0).sigmas(10, sigma_start=0.1)
    assert sigmas.shape == (11,)
    assert float(sigmas[0]) == pytest.approx(0.1)
    assert float(sigmas[-2]) == pytest.approx(0.002)
    assert float(sigmas[-1]) == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_karras_golden_values() -> None:
    # EDM eq. 5 by hand for n = 3 from 1.0 to 0.002, rho = 7
    s = KarrasSchedule(0.002, 5.0, 7.0).sigmas(3, sigma_start=1.0).tolist()
    mid = ((1.0 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 1.0)) ** 7)
    assert s == pytest.approx([1.0, mid, 0.002, 0.0], rel=1e-6)


def test_single_step_schedule_is_start_then_zero() -> None:
    assert KarrasSchedule().sigmas(1, sigma_start=0.05).tolist() == pytest.approx([0.05, 0.0])


@pytest.mark.parametrize("bad", [dict(sigma_min=0.0), dict(sigma_min=2.0, sigma_max=1.0), dict(rho=0.0)])
def test_schedule_rejects_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        KarrasSchedule(**bad)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_oracle_denoiser_makes_every_sampler_return_x0(name: str) -> None:
    x0 = torch.linspace(0, 1, 64).reshape(1, 1, 4, 4, 4)
    g = torch.Generator().manual_seed(0)
    y = x0 + 0.1 * torch.randn(x0.shape, generator=g)
    sigmas = KarrasSchedule().sigmas(5, sigma_start=0.1)
    out = get_sampler(name)(lambda x, s: x0.clone(), y, sigmas, generator=g)
    assert torch.allclose(out, x0, atol=1e-6)


def test_euler_follows_the_ode_for_a_linear_denoiser() -> None:
    # D(x, s) = x / (1 + s^2) is the exact posterior mean for x0 ~ N(0, 1); the ODE solution scales
    # x by sqrt((1 + s_end^2) / (1 + s_start^2)); many Euler steps must approach it.
    x = torch.ones(1, 1, 2, 2, 2)
    sigmas = KarrasSchedule(0.01, 5.0, 7.0).sigmas(400, sigma_start=2.0)[:-1]
    out = get_sampler("euler")(lambda v, s: v / (1 + s * s), x, torch.cat([sigmas, sigmas[-1:]]))
    expected = math.sqrt((1 + 0.01**2) / (1 + 2.0**2))
    assert float(out.mean()) == pytest.approx(expected, rel=0.02)


def test_ancestral_is_stochastic_and_seeded() -> None:
    x = torch.zeros(1, 1, 4, 4, 4)
    sigmas = KarrasSchedule().sigmas(4, sigma_start=0.5)
    def run(seed: int) -> torch.Tensor:
        return get_sampler("ancestral")(lambda v, s: 0.5 * v, x, sigmas, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_unknown_sampler_names_the_choices() -> None:
    with pytest.raises(ValueError, match="euler"):
        get_sampler("ddpm")


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_preconditioning_limits() -> None:
    den = Preconditioned(_Identity(), sigma_data=0.5, sigma_min=0.002, sigma_max=5.0)
    x = torch.randn(2, 1, 4, 4, 4)
    # with F = 0, D = c_skip x: nearly x at low noise, nearly 0 at high noise
    assert torch.allclose(den(x, 1e-4), x, atol=1e-6)
    assert float(den(x, 100.0).abs().max()) < 1e-3 * float(x.abs().max()) * 10
    t = den.timestep(torch.tensor([0.002, 5.0]))
    assert t.tolist() == pytest.approx([0.0, 1000.0], abs=1e-3)


def test_loss_is_zero_for_the_perfect_network() -> None:
    x0 = torch.rand(2, 1, 4, 4, 4)
    sigma = torch.tensor([0.05, 0.2])
    x = x0 + sigma.view(-1, 1, 1, 1, 1) * torch.randn_like(x0)

    class Perfect(torch.nn.Module):
        def forward(self, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            c_skip, c_out, c_in = den.scalings(sigma.view(-1, 1, 1, 1, 1))
            return (x0 - c_skip * (inp / c_in)) / c_out

    den = Preconditioned(Perfect(), 0.5, 0.002, 5.0)
    assert float(den.loss(x0, x, sigma)) < 1e-8
