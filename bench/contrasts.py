"""Paired contrasts between two cells of a study, decided as one family, and the seeds they need.

A contrast is a cell against its baseline cell over the seeds both hold (the same seed: the same
initial weights and data order, so the pairs share that noise). Estimation first: the mean
paired difference with its Student-t interval (scipy.stats.ttest_rel), the effect size d_z, and
the probability of improvement (the fraction of seeds on which the cell is better, as rliable's
probability of improvement on paired runs, Agarwal et al. 2021) with a Wilson interval (Wilson
1927, statsmodels). Then the tests: the paired t-test, and beside it the exact sign-flip
permutation test (scipy.stats.permutation_test over all 2^n sign patterns), which assumes no
normality but cannot go below 2 / 2^n: with 3 seeds, 0.25.

A family of contrasts is decided with Holm's step-down procedure (Holm 1979; statsmodels'
multipletests) on the t-tests: better or worse where the adjusted p is at most alpha;
"no meaningful difference" where a smallest effect that matters is declared and the
two one-sided tests (Schuirmann 1987) at alpha / m put the difference inside it; undecided
otherwise. Power (statsmodels' TTestPower: a paired t-test is a one-sample test on the
differences) gives the smallest detectable difference and the seeds needed, at alpha / m
(Bonferroni: the level Holm's first step demands).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.analysis import CONFIDENCE

Direction = Literal["minimize", "maximize"]
DECISIONS = ("better", "worse", "no meaningful difference", "undecided")


@dataclass(frozen=True)
class Contrast:
    """A cell against its baseline over their common seeds (differences: cell - baseline)."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    difference: float  # the mean paired difference, in the score's unit
    ci_low: float  # its Student-t interval at `confidence`
    ci_high: float
    sd: float  # of the differences (ddof 1)
    effect_size: float  # d_z = difference / sd (inf when sd is 0 and the difference is not)
    improvement_probability: float  # share of seeds where the cell is better (ties: 1/2)
    improvement_ci: tuple[float, float]  # Wilson interval of it
    p_t: float  # two-sided paired t-test
    p_exact: float  # two-sided exact sign-flip permutation test
    direction: Direction
    confidence: float = CONFIDENCE

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def min_p_exact(self) -> float:
        """The smallest p the exact test can give with these n pairs."""
        return min_exact_p(self.n)


def min_exact_p(n: int) -> float:
    """Two-sided exact sign-flip test with n pairs: its smallest p, 2 / 2^n."""
    return min(1.0, 2.0 / 2**n)


def exact_test_can_reach(n: int, alpha: float) -> bool:
    """Whether the exact sign-flip test with n pairs can reach p <= alpha."""
    return min_exact_p(n) <= alpha


def paired_contrast(
    cell: Mapping[int, float],
    baseline: Mapping[int, float],
    *,
    direction: Direction,
    confidence: float = CONFIDENCE,
) -> Contrast | None:
    """The contrast of `cell` against `baseline` (seed -> value) over their common seeds;
    None with fewer than 2 common seeds."""
    from scipy import stats
    from statsmodels.stats.proportion import proportion_confint

    seeds = tuple(sorted(set(cell) & set(baseline)))
    if len(seeds) < 2:
        return None
    a = np.array([cell[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    d = a - b
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    # Differences equal up to the rounding of the values (10.3 - 10 against 11.3 - 11) have
    # no spread to test against: no interval, no t-test, undecided; the exact test still runs.
    rounding = 8 * np.finfo(float).eps * max(float(np.abs(a).max()), float(np.abs(b).max()))
    if sd > rounding:
        test = stats.ttest_rel(a, b)
        interval = test.confidence_interval(confidence)
        low, high, p_t = float(interval.low), float(interval.high), float(test.pvalue)
        effect = mean / sd
    else:
        sd = 0.0
        low = high = p_t = math.nan
        effect = math.nan if abs(mean) <= rounding else math.copysign(math.inf, mean)
    better = -d if direction == "minimize" else d
    wins = float((better > 0).sum() + 0.5 * (better == 0).sum())
    win_low, win_high = proportion_confint(wins, n, alpha=1 - confidence, method="wilson")
    return Contrast(
        seeds=seeds,
        differences=tuple(float(x) for x in d),
        difference=mean,
        ci_low=low,
        ci_high=high,
        sd=sd,
        effect_size=effect,
        improvement_probability=wins / n,
        improvement_ci=(float(win_low), float(win_high)),
        p_t=p_t,
        p_exact=sign_flip_p(d),
        direction=direction,
        confidence=confidence,
    )


def sign_flip_p(differences: Sequence[float]) -> float:
    """Two-sided p of the exact sign-flip (paired permutation) test of the mean difference:
    every one of the 2^n sign patterns (scipy.stats.permutation_test, n_resamples=inf)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if not d.any():
        return 1.0
    result = stats.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
    )
    return float(result.pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (statsmodels' multipletests)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(p) for p in multipletests(list(p_values), method="holm")[1]]


def equivalent(contrast: Contrast, *, alpha: float, min_effect: float) -> bool:
    """TOST (Schuirmann 1987) at level alpha: the (1 - 2 alpha) interval of the mean paired
    difference lies inside (-min_effect, +min_effect). False without spread (no interval)."""
    from scipy import stats

    if not contrast.sd > 0:
        return False
    half = stats.t.ppf(1 - alpha, contrast.n - 1) * contrast.sd / math.sqrt(contrast.n)
    return -min_effect < contrast.difference - half and contrast.difference + half < min_effect


def decide(
    contrast: Contrast | None, *, alpha: float, min_effect: float | None, direction: Direction
) -> str:
    """One contrast at level alpha: better/worse when its (1 - alpha) interval excludes 0,
    "no meaningful difference" by TOST, else undecided (also without 2 seeds or spread)."""
    if contrast is None:
        return "undecided"
    _check_direction(contrast, direction)
    if contrast.p_t <= alpha and contrast.difference != 0:
        return _sign_decision(contrast.difference, direction)
    if min_effect is not None and equivalent(contrast, alpha=alpha, min_effect=min_effect):
        return "no meaningful difference"
    return "undecided"


def decide_family(
    contrasts: Sequence[Contrast | None],
    *,
    alpha: float,
    min_effect: float | None,
    direction: Direction,
) -> list[str]:
    """Each contrast's decision, the family of all of them (None: fewer than 2 common seeds,
    kept in the family with p = 1) controlled at `alpha`: Holm on the t-tests for better and
    worse; TOST at alpha / m (Bonferroni) for "no meaningful difference". Each kind of claim
    keeps its family-wise error at most alpha (together at most 2 alpha in the worst case)."""
    m = len(contrasts)
    adjusted = holm([p_or_one(c) for c in contrasts])
    decisions = []
    for contrast, p in zip(contrasts, adjusted, strict=True):
        if contrast is None:
            decisions.append("undecided")
            continue
        _check_direction(contrast, direction)
        if p <= alpha and contrast.difference != 0:
            decisions.append(_sign_decision(contrast.difference, direction))
        elif min_effect is not None and equivalent(
            contrast, alpha=alpha / m, min_effect=min_effect
        ):
            decisions.append("no meaningful difference")
        else:
            decisions.append("undecided")
    return decisions


def p_or_one(contrast: Contrast | None) -> float:
    """A contrast's t-test p for Holm: 1 when it has none (no seeds in common, no spread)."""
    if contrast is None or math.isnan(contrast.p_t):
        return 1.0
    return contrast.p_t


def _sign_decision(difference: float, direction: Direction) -> str:
    lower = difference < 0
    return "better" if lower == (direction == "minimize") else "worse"


def _check_direction(contrast: Contrast, direction: Direction) -> None:
    if direction != contrast.direction:
        raise ValueError(
            f"the contrast was estimated for direction {contrast.direction!r}, not {direction!r}"
        )


def minimal_detectable_effect(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at `alpha` detects with
    `power`, given n pairs whose differences have SD `sd` (statsmodels' TTestPower)."""
    from statsmodels.stats.power import TTestPower

    if n < 2:
        return math.inf
    effect = TTestPower().solve_power(
        nobs=n, alpha=alpha, power=power, alternative="two-sided", effect_size=None
    )
    return float(effect) * sd


def seeds_needed(
    sd: float, min_effect: float, alpha: float, power: float = 0.8, max_seeds: int = 100
) -> int | None:
    """The fewest seeds (pairs) for which a two-sided paired t-test at `alpha` detects a true
    difference of `min_effect` with `power`; None beyond `max_seeds`."""
    from statsmodels.stats.power import TTestPower

    if sd == 0:
        return 2
    effect = min_effect / sd
    for n in range(2, max_seeds + 1):
        achieved = TTestPower().power(effect, n, alpha, alternative="two-sided")
        if achieved >= power:
            return n
    return None
