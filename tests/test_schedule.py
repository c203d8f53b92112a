"""Noise schedules and forward-process closed forms against the papers' formulas."""

import math

import numpy as np
import pytest
import torch

from casdm.config import ConfigError
from casdm.schedule import Schedule

EPS = float(np.finfo(np.float64).eps)  # float64's machine epsilon


def test_linear_betas_run_from_1e_4_to_0_02_at_T_1000():
    betas = Schedule.named("linear", 1000).betas
    assert betas.dtype == torch.float64
    # linspace writes its start, and steps back from its end: both ends exact.
    assert betas[0].item() == 1e-4
    assert betas[-1].item() == 0.02
    assert torch.all(betas[1:] > betas[:-1])


def test_cosine_abar_matches_nichol_dhariwal_closed_form():
    T, s = 1000, 0.008
    schedule = Schedule.named("cosine", T)

    def f(t: int) -> float:  # Nichol & Dhariwal 2021, Eq. 17
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # abar[k] is abar at t = k + 1; the last beta is clipped to 0.999, so stop one step short.
    expected = torch.tensor([f(t) / f(0) for t in range(1, T)], dtype=torch.float64)
    # Both form the cosine's argument with the same float64 operations; the two cosines (and
    # squares) are within an ulp or two: 4 EPS. Ours then goes through betas = 1 - r
    # (r = abar_t / abar_t-1 >= 1/4 before the clipped last step) and the cumulative product of
    # 1 - beta: ~6 EPS relative per factor (three roundings of EPS / 2 over r), independent
    # over the T factors: 6 sqrt(T) EPS. Measured: 1/80 of it.
    rtol = (4 + 6 * math.sqrt(T)) * EPS
    torch.testing.assert_close(schedule.abar[: T - 1], expected, rtol=rtol, atol=0)
    assert schedule.betas[-1].item() == 0.999  # the clip writes the constant itself


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_x0_from_eps_and_eps_from_x0_invert_each_other(name):
    schedule = Schedule.named(name, 100)
    g = torch.Generator().manual_seed(0)
    # float64: near t = T, x0_from_eps divides by sqrt(abar) ~ 1e-3 and would magnify float32
    # rounding, which says nothing about the algebra under test.
    x0 = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 99])
    x_t = schedule.q_sample(x0, t, eps)
    abar = schedule.abar[t].view(-1, 1, 1, 1)
    assert torch.equal(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)  # the same operations
    # x_t carries ~2 EPS (|x0| + |eps|) of rounding, the inversion's product and difference 2
    # EPS more, and dividing by sqrt(abar) (x0) or sqrt(1 - abar) (eps) magnifies it: up to
    # 2,000 times at t = 99 of the cosine schedule. Measured: 1/80 to 1/20 of it.
    size = (x0.abs() + eps.abs()).max().item()
    x0_error = 5 * EPS * size / abar.sqrt().min().item()
    eps_error = 5 * EPS * size / (1 - abar).sqrt().min().item()
    torch.testing.assert_close(schedule.x0_from_eps(x_t, t, eps), x0, atol=x0_error, rtol=0)
    torch.testing.assert_close(schedule.eps_from_x0(x_t, t, x0), eps, atol=eps_error, rtol=0)


def test_unknown_schedule_name_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match="schedule: unknown schedule 'cosin'; valid schedules: cosine, linear"
    ):
        Schedule.named("cosin", 10)


def test_cosine_options_reach_the_betas():
    from casdm.config import DiffusionConfig

    def nichol_dhariwal(T, s, max_beta=0.999):  # Eq. 17, written again with numpy
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
        return np.minimum(1 - f[1:] / f[:-1], max_beta)

    def rtol(betas):
        # The same float64 operations up to the cosines (an ulp or two apart, torch's and
        # numpy's) and our extra division by f(0): ~6 EPS relative in r = f(t) / f(t-1); then
        # beta = 1 - r has 6 EPS r / beta of it, largest at the smallest beta (1.7e-3 at
        # t = 1: 3,500 EPS). The clipped betas are the constant on both sides. Measured: 1/50
        # to 1/25 of it.
        return EPS * (6 * ((1 - betas) / betas).max() + 1)

    default = Schedule.from_config(DiffusionConfig(schedule="cosine", timesteps=50))
    want = nichol_dhariwal(50, 0.008)
    np.testing.assert_allclose(default.betas.numpy(), want, rtol=rtol(want), atol=0)
    shifted = Schedule.from_config(
        DiffusionConfig(schedule="cosine", timesteps=50, s=0.02, max_beta=0.5)
    )
    want = nichol_dhariwal(50, 0.02, 0.5)
    np.testing.assert_allclose(shifted.betas.numpy(), want, rtol=rtol(want), atol=0)


def test_the_linear_schedule_needs_more_than_20_steps_and_cosine_does_not():
    from bench.config import RunConfig
    from casdm.config import from_dict

    linear = from_dict(RunConfig, {"diffusion": {"timesteps": 20}, "sample": {"steps": 10}})
    with pytest.raises(
        ConfigError, match=r"diffusion\.timesteps: must be > 20 for the linear schedule, got 20"
    ):
        linear.validate()
    cosine = {"diffusion": {"schedule": "cosine", "timesteps": 20}, "sample": {"steps": 10}}
    from_dict(RunConfig, cosine).validate()
