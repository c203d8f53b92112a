"""The built-in noise schedules (casdm.schedule): `load()(T, **options) -> betas [T]`."""

from dataclasses import dataclass
from typing import Any

from casdm.components import NoOptions, Schedule, Shape, register
from casdm.config import ConfigError, check


@dataclass(frozen=True, kw_only=True)
class Linear(Schedule):
    """Ho et al.'s betas scale as 1000/T and reach 1 (destroying the signal) at T <= 20."""

    def validate(self, options: NoOptions, shape: Shape | None, config: Any) -> None:
        T = config.diffusion.timesteps if config is not None else None
        if T is not None and T <= 20:
            raise ConfigError("timesteps", f"must be > 20 for the linear schedule, got {T}")


LINEAR = register(
    Linear(
        name="linear",
        target="casdm.schedule:linear_betas",
        options=NoOptions,
        summary="betas from 1e-4 to 0.02, scaled by 1000/T (Ho et al. 2020)",
    )
)


@dataclass(frozen=True)
class CosineOptions:
    s: float = 0.008  # the offset of Nichol & Dhariwal 2021, Eq. 17
    max_beta: float = 0.999

    def __post_init__(self):
        check(self.s >= 0, "s", f"must be >= 0, got {self.s}")
        check(0 < self.max_beta < 1, "max_beta", f"must be in (0, 1), got {self.max_beta}")


COSINE = register(
    Schedule(
        name="cosine",
        target="casdm.schedule:cosine_betas",
        options=CosineOptions,
        summary="cosine abar (Nichol & Dhariwal 2021), betas clipped at max_beta",
    )
)
