"""The run configurations a study's trials may use, and what they need before any trial runs.

Checked before any database exists (the claim protocol in docs/DESIGN.md): every config a
trial may run and the pretrained weights they need.
"""

import dataclasses

from bench.config import RunConfig


def required_weights(configs: list[RunConfig]) -> list[str]:
    """casdm.weights names the configs' components need (pretrained networks), sorted."""
    return sorted({name for c in configs for name in c.required_weights()})


def study_caveats(configs: list[RunConfig]) -> list[str]:
    """The caveats of every component the configs use (e.g. a random LPIPS trunk), once each."""
    return list(dict.fromkeys(caveat for c in configs for caveat in c.caveats()))


def with_device(config: RunConfig, device: str | None) -> RunConfig:
    """`config` with `device` (None: as it is)."""
    return config if device is None else dataclasses.replace(config, device=device)
