"""The noise schedules a RunConfig may name, imported on first use.

Architectures, metric losses, samplers and datasets are components with their own options
(casdm.components; built-ins in casdm.specs); a schedule is a plain function of T.
"""

from casdm.registry import Registry

SCHEDULES = Registry(
    {"linear": "casdm.schedule:linear_betas", "cosine": "casdm.schedule:cosine_betas"}
)
