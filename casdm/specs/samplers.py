"""The built-in samplers (casdm.samplers) and their options."""

from dataclasses import dataclass

from casdm.components import NoOptions, Sampler, register
from casdm.config import check


@dataclass(frozen=True)
class DDIMOptions:
    # Song et al. 2021, Eq. 16: 0 is deterministic; 1 at steps = T is DDPM's posterior variance.
    eta: float = 0.0

    def __post_init__(self):
        check(0 <= self.eta <= 1, "eta", f"must be in [0, 1], got {self.eta}")


@dataclass(frozen=True, kw_only=True)
class DDIM(Sampler):
    def describe(self, options: DDIMOptions) -> str:
        return f"η = {options.eta:g}"


DDIM_SAMPLER = register(
    DDIM(
        name="ddim",
        target="casdm.samplers:ddim",
        options=DDIMOptions,
        summary="DDIM (Song et al. 2021); eta > 0 adds noise",
    )
)
DDPM_SAMPLER = register(
    Sampler(
        name="ddpm",
        target="casdm.samplers:ddpm",
        options=NoOptions,
        summary="ancestral sampling from the posterior (Ho et al. 2020)",
    )
)
