"""Noise schedules and forward-process closed forms against the papers' formulas."""

import math

import pytest
import torch

from casdm.registry import UnknownNameError
from casdm.schedule import Schedule


def test_linear_betas_run_from_1e_4_to_0_02_at_T_1000():
    betas = Schedule.named("linear", 1000).betas
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.all(betas[1:] > betas[:-1])


def test_cosine_abar_matches_nichol_dhariwal_closed_form():
    T, s = 1000, 0.008
    schedule = Schedule.named("cosine", T)

    def f(t: int) -> float:  # Nichol & Dhariwal 2021, Eq. 17
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # abar[k] is abar at t = k + 1; the last beta is clipped to 0.999, so stop one step short.
    expected = torch.tensor([f(t) / f(0) for t in range(1, T)], dtype=torch.float64)
    torch.testing.assert_close(schedule.abar[: T - 1], expected, rtol=1e-10, atol=1e-14)
    assert schedule.betas[-1].item() == pytest.approx(0.999)


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
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    torch.testing.assert_close(schedule.x0_from_eps(x_t, t, eps), x0, atol=1e-10, rtol=0)
    torch.testing.assert_close(schedule.eps_from_x0(x_t, t, x0), eps, atol=1e-10, rtol=0)


def test_unknown_schedule_name_lists_the_valid_ones():
    with pytest.raises(
        UnknownNameError, match="unknown schedule 'cosin'; valid schedules: cosine, linear"
    ):
        Schedule.named("cosin", 10)
