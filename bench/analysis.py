"""Statistics behind the tables: confidence intervals over seeds, tests against a baseline, Holm.

Every distribution comes from scipy (the tests from scipy.stats, the t quantile from
scipy.special); Holm's step-down correction is a few lines of arithmetic on sorted p-values,
written out here because scipy ships only Benjamini-Hochberg.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95  # the level of every interval in the tables
ALPHA = 0.05  # significance level of the baseline comparisons, after Holm's correction


@dataclass(frozen=True)
class Interval:
    """Mean of n values with the half-width of its Student-t confidence interval (None: n < 2)."""

    mean: float
    half_width: float | None
    std: float | None  # sample standard deviation (ddof = 1)
    n: int


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean ± t_{(1+c)/2, n-1} s / sqrt(n): the CONFIDENCE interval of the mean over seeds."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, None, None, len(x))
    # Student's t quantile: scipy.special.stdtrit is what scipy.stats.t.ppf evaluates, without
    # the second it takes to import scipy.stats (`bench table` would pay it on every call).
    from scipy import special

    std = float(x.std(ddof=1))
    quantile = float(special.stdtrit(len(x) - 1, (1 + confidence) / 2))
    return Interval(mean, quantile * std / math.sqrt(len(x)), std, len(x))


@dataclass(frozen=True)
class Comparison:
    """A cell against its baseline cell on one score: (cell - baseline), effect size, p-value."""

    test: str  # "paired t" (same seeds on both sides) or "Welch t"
    n: int  # pairs (paired) or the cell's values (Welch)
    difference: float  # mean(cell) - mean(baseline), in the score's unit
    effect_size: float  # paired: mean(d) / sd(d) (d_z); Welch: difference / sqrt((s1²+s2²)/2)
    p_value: float  # two-sided, uncorrected


def compare(cell: Mapping[int, float], baseline: Mapping[int, float]) -> Comparison | None:
    """Two-sided t-test of a cell's per-seed values against the baseline's (seed -> value).

    Paired by seed (scipy.stats.ttest_rel) when both hold the same seeds, at least two: the same
    seed means the same initial weights and data order, so the pairs share that noise. Welch's
    test (ttest_ind, equal_var=False) otherwise. None when either side has fewer than two
    values, or the test is undefined (no variance at all).
    """
    import numpy as np
    from scipy import stats

    if len(cell) < 2 or len(baseline) < 2:
        return None
    if set(cell) == set(baseline):
        seeds = sorted(cell)
        a = np.array([cell[s] for s in seeds], dtype=float)
        b = np.array([baseline[s] for s in seeds], dtype=float)
        d = a - b
        sd = float(d.std(ddof=1))
        if sd == 0:
            return None
        p = float(stats.ttest_rel(a, b).pvalue)
        return Comparison("paired t", len(d), float(d.mean()), float(d.mean()) / sd, p)
    a = np.array(list(cell.values()), dtype=float)
    b = np.array(list(baseline.values()), dtype=float)
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if pooled == 0:
        return None
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    difference = float(a.mean() - b.mean())
    return Comparison("Welch t", len(a), difference, difference / pooled, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.

    Sorted ascending, the i-th smallest (i from 0) becomes max_{j <= i} min(1, (m - j) p_(j)):
    rejecting where the adjusted value is <= alpha is Holm's procedure at level alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
