"""Noise schedules and the forward process in float64 (Ho et al. 2020; Nichol & Dhariwal 2021)."""

import dataclasses
import math

import torch
from torch import nn

from casdm.config import DiffusionConfig


def linear_betas(T: int) -> torch.Tensor:
    """Linear betas from 1e-4 to 0.02 scaled to T steps (Ho et al. 2020, Sec. 4)."""
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule, Nichol & Dhariwal 2021, Eq. 17, betas clipped at 0.999."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather per-sample schedule values at integer steps t, shaped [B, 1, 1, 1] in like's dtype."""
    return values[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class Schedule(nn.Module):
    """A discrete diffusion schedule: betas, abar_t and the closed forms built on them.

    Buffers are float64 (as improved-diffusion keeps them) and are cast to the input's dtype
    only when gathered, so the precision of the schedule never depends on the model's dtype.
    """

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("abar", abar, persistent=False)
        self.register_buffer("abar_prev", abar_prev, persistent=False)

    @classmethod
    def named(cls, name: str, T: int) -> "Schedule":
        """The registered schedule `name` with T steps and its default options."""
        return cls.from_config(DiffusionConfig(schedule=name, timesteps=T))

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "Schedule":
        """The schedule `cfg.schedule` with `cfg.timesteps` steps and its options."""
        betas = cfg.component.load()(cfg.timesteps, **dataclasses.asdict(cfg.options))
        return cls(betas)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4)."""
        abar = _at(self.abar, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert the forward process: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        abar = _at(self.abar, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise implied by x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
        abar = _at(self.abar, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0) (Ho et al. 2020, Eq. 6-7)."""
        beta = _at(self.betas, t, x_t)
        abar = _at(self.abar, t, x_t)
        abar_prev = _at(self.abar_prev, t, x_t)
        mean = (abar_prev.sqrt() * beta / (1 - abar)) * x0 + (
            (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
        ) * x_t
        var = beta * (1 - abar_prev) / (1 - abar)
        return mean, var
