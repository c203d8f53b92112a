"""The run configurations a study's trials may use, and what they need before any trial runs.

Checked before any database exists (the claim protocol in docs/DESIGN.md): every config a
trial may run and the pretrained weights they need.
"""

import dataclasses

from bench.config import RunConfig
from bench.study import Choices, Study
from casdm.catalog import LPIPS_TRUNKS


def trial_configs(study: Study) -> list[RunConfig]:
    """Every config a trial may run: each grid cell, or each search choice at its bounds."""
    if study.is_grid:
        return [study.config(params) for params in study.cells()]
    configs = []
    for params in study.cells():
        configs.append(study.config(params))
        for key, axis in study.search.items():
            values = axis.choices if isinstance(axis, Choices) else (axis.low, axis.high)
            configs.extend(study.config({**params, key: value}) for value in values)
    return configs


def required_weights(configs: list[RunConfig]) -> list[str]:
    """casdm.weights names the configs' LPIPS trunks need (pretrained trunks only), sorted."""
    return sorted(
        {
            LPIPS_TRUNKS[c.metric.net]
            for c in configs
            if c.metric.name == "lpips" and c.metric.trunk == "pretrained"
        }
    )


def lpips_trunks(configs: list[RunConfig]) -> str | None:
    """The LPIPS trunk label: "pretrained", "random", "pretrained+random", or None (no LPIPS)."""
    trunks = sorted({c.metric.trunk for c in configs if c.metric.name == "lpips"})
    return "+".join(trunks) if trunks else None


def with_device(config: RunConfig, device: str | None) -> RunConfig:
    """`config` with `device` (None: as it is)."""
    return config if device is None else dataclasses.replace(config, device=device)
