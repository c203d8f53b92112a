"""The built-in architectures (casdm.architectures) and their options."""

from dataclasses import dataclass
from typing import Literal

from casdm.components import Architecture, NoOptions, register
from casdm.config import check


@dataclass(frozen=True)
class BlendOptions:
    """How an architecture with two x0 estimates blends them, and the weight of its x0 loss."""

    # The blending weight r is per pixel, per sample, or the constant r_fixed.
    r_mode: Literal["pixel", "sample", "fixed"] = "pixel"
    r_fixed: float = 0.5
    lambda_x0: float = 1.0  # weight of the x0 MSE term

    def __post_init__(self):
        check(0.0 <= self.r_fixed <= 1.0, "r_fixed", f"must be in [0, 1], got {self.r_fixed}")
        check(self.lambda_x0 >= 0, "lambda_x0", f"must be >= 0, got {self.lambda_x0}")


@dataclass(frozen=True)
class CasDMOptions(BlendOptions):
    """Cas-DM's options besides the blend (casdm.architectures.CasDM)."""

    # What phi sees besides t: x0_star and x_t (default) or x0_star alone.
    phi_input: Literal["x0_star+x_t", "x0_star"] = "x0_star+x_t"
    # Sampling: theta's eps drives the DDIM direction, or the eps implied by x0_hat.
    sampling_eps: Literal["theta", "x0_hat"] = "theta"
    phi_width: float = 1.0  # phi's base width relative to theta's

    def __post_init__(self):
        super().__post_init__()
        check(self.phi_width > 0, "phi_width", f"must be > 0, got {self.phi_width}")


DDPM = register(
    Architecture(
        name="ddpm",
        target="casdm.architectures:EpsDDPM",
        options=NoOptions,
        summary="DDPM: one UNet predicts eps (Ho et al. 2020)",
    )
)
X0_DDPM = register(
    Architecture(
        name="x0-ddpm",
        target="casdm.architectures:X0DDPM",
        options=NoOptions,
        summary="DDPM predicting x0 directly",
    )
)
CAS_DM = register(
    Architecture(
        name="cas-dm",
        target="casdm.architectures:CasDM",
        options=CasDMOptions,
        summary="Cas-DM: eps net theta, then x0 net phi fed sg(theta) (An et al. 2024)",
    )
)
DUAL = register(
    Architecture(
        name="dual",
        target="casdm.architectures:DualOutput",
        options=BlendOptions,
        summary="dual-output diffusion: one UNet gives eps, x0' and r (Benny & Wolf 2022)",
    )
)
