"""What a trial cost: the cost keys, their display, and reading them off a stored trial.

Every trial records a `cost` dict (Optuna user attr "cost", MLflow metrics "cost/<key>"):

- params_m: trainable parameters, millions (both networks of Cas-DM)
- train_images_per_s: training throughput over all processes
- train_hours: training wall-clock, hours
- device_hours: train_hours x processes (torchrun ranks; one device each)
- sample_s_per_1k: sampling wall-clock per 1,000 images (empty when the samples of a stopped
  run were reused, so nothing was timed)
- nfe: network evaluations per sample (the sampler's, for its steps)
- peak_memory_mb: CUDA max allocated, or the process's max RSS on the CPU (peak_memory_kind)
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CostFormat:
    """How one cost key is shown: column title and decimals."""

    name: str
    decimals: int


COSTS: dict[str, CostFormat] = {
    "params_m": CostFormat("Params (M)", 2),
    "train_images_per_s": CostFormat("Train img/s", 0),
    "train_hours": CostFormat("Train h", 3),
    "device_hours": CostFormat("Device h", 3),
    "sample_s_per_1k": CostFormat("Sample s/1k", 2),
    "nfe": CostFormat("NFE", 0),
    "peak_memory_mb": CostFormat("Peak MB", 0),
}


def trial_cost(user_attrs: Mapping[str, Any]) -> dict[str, float | None]:
    """Every COSTS key of a stored trial; trials stored before "cost" existed give what their
    older attributes hold (num_params, images_per_s, peak_memory_mb) and None for the rest."""
    cost = user_attrs.get("cost")
    if not isinstance(cost, Mapping):
        params = user_attrs.get("num_params")
        cost = {
            "params_m": params / 1e6 if isinstance(params, int | float) else None,
            "train_images_per_s": user_attrs.get("images_per_s"),
            "peak_memory_mb": user_attrs.get("peak_memory_mb"),
        }
    return {key: _number(cost.get(key)) for key in COSTS}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
