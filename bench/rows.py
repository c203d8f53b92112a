"""A study's finished trials as rows (bench.results): selecting a cell's trials, reading a
score per seed. Shared by the tables, the findings and the per-trial export."""

import math
from typing import Any

from bench.study import value_text

Row = dict[str, Any]  # one COMPLETE trial: its params, scores, costs (bench.results)


def select(trials: list[Row], values: dict[str, Any]) -> list[Row]:
    """The trials whose values of the axes in `values` are those (compared as printed)."""
    wanted = {key: value_text(value) for key, value in values.items()}
    return [
        trial
        for trial in trials
        if all(key in trial and value_text(trial[key]) == text for key, text in wanted.items())
    ]


def column(trials: list[Row], key: str) -> list[Any]:
    """The values of `key` in the trials that hold it (a missing or NaN cell is skipped)."""
    return [t[key] for t in trials if key in t and not is_nan(t[key])]


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def is_finite(value: Any) -> bool:
    """A real number (not a bool, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def per_seed(selected: list[Row], score: str) -> dict[int, float]:
    """seed -> value of the cell's trials (trial order stands in for seeds in a search)."""
    return {
        int(trial["seed"]) if is_finite(trial.get("seed")) else i: float(trial[score])
        for i, trial in enumerate(selected)
        if is_finite(trial.get(score))
    }


def mean(selected: list[Row], key: str) -> float | None:
    """The mean of the finite values of `key` (None: none)."""
    values = [float(v) for v in column(selected, key) if is_finite(v)]
    return sum(values) / len(values) if values else None
