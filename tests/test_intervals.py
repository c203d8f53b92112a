"""Intervals of bounded scores, by simulation against known truth, and the variance sources."""

import numpy as np
import pytest
from scipy import stats

from bench.analysis import t_interval
from bench.intervals import (
    hierarchical_interval,
    proportion_interval,
    proportion_intervals,
    variance_components,
)

N = 500  # samples per seed: each proportion is k / N
SIMULATIONS = 20_000
# The Monte-Carlo SE of a coverage near 0.95 over 20,000 studies: sqrt(0.95 * 0.05 / 20,000) =
# 0.0015; a claim "within 2 points" is asserted as |coverage - 0.95| <= 0.02, which leaves the
# method itself at least 1.5 points after 3 Monte-Carlo SEs.
WITHIN = 0.02


def _studies(rng, mean, sd, seeds):
    """[SIMULATIONS, seeds] per-seed proportions: true p_s ~ Beta(mean, sd), k ~ Bin(N, p_s)."""
    if sd == 0:
        truth = np.full((SIMULATIONS, seeds), mean)
    else:
        concentration = mean * (1 - mean) / sd**2 - 1
        truth = rng.beta(mean * concentration, (1 - mean) * concentration, (SIMULATIONS, seeds))
    return rng.binomial(N, truth) / N


@pytest.mark.parametrize("seeds", [5, 10])
@pytest.mark.parametrize(("mean", "sd"), [(0.01, 0.005), (0.05, 0.02), (0.3, 0.02), (0.5, 0.05)])
def test_the_bounded_interval_covers_the_true_mean_95_percent_of_the_time(mean, sd, seeds):
    values = _studies(np.random.default_rng(seeds), mean, sd, seeds)
    low, high, _ = proportion_intervals(values, N)
    assert np.all((low >= 0) & (low < high) & (high <= 1))  # inside [0, 1], never zero width
    observed = values.mean(axis=1)
    assert np.all((low <= observed) & (observed <= high))  # it holds what the table shows
    coverage = np.mean((low <= mean) & (mean <= high))
    assert abs(coverage - 0.95) <= WITHIN, coverage


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_with_few_seeds_or_no_spread_it_errs_on_the_safe_side(seeds):
    """Pure binomial noise (every seed the same model): conservative, at most 99% (+3 MC SEs);
    with 3 seeds and a spread between them, never below 95% (its t interval over seeds has
    2 degrees of freedom, and it is never narrower than the binomial noise); with 2, wide."""
    values = _studies(np.random.default_rng(seeds), 0.3, 0.0, seeds)
    low, high, _ = proportion_intervals(values, N)
    coverage = np.mean((low <= 0.3) & (high >= 0.3))
    assert 0.95 - 3 * 0.0015 <= coverage <= 0.99 + 3 * 0.0015
    for mean, sd in ((0.05, 0.02), (0.3, 0.05)):
        spread = _studies(np.random.default_rng(seeds + 10), mean, sd, 3)
        low, high, _ = proportion_intervals(spread, N)
        assert np.mean((low <= mean) & (high >= mean)) >= 0.95 - 3 * 0.0015
    two = _studies(np.random.default_rng(seeds + 20), 0.3, 0.05, 2)
    low, high, _ = proportion_intervals(two, N)
    assert np.mean((low <= 0.3) & (high >= 0.3)) >= 0.95  # 2 seeds: wide, never short


def test_the_t_interval_covers_95_percent_on_normal_data():
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, size=(SIMULATIONS, 3))
    intervals = [t_interval(v) for v in values]
    covered = [abs(iv.mean - 10.0) <= iv.half_width for iv in intervals]
    assert abs(np.mean(covered) - 0.95) <= 3 * 0.0015  # exact for normal data


def test_the_cases_that_break_a_t_interval():
    zero = proportion_interval([0.0, 0.0, 0.0], N)  # 0.000 ± 0.000 under a t interval
    assert zero.mean == 0 and zero.low == 0 and 0 < zero.high < 0.01
    assert zero.method == "logit, binomial floor"
    near_zero = proportion_interval([0.009, 0.0, 0.018], N)  # t: 0.009 ± 0.022, below 0
    assert near_zero.low > 0 and near_zero.method == "logit t over seeds"
    same = proportion_interval([0.510, 0.508, 0.510], N)  # counts 255/254/255 of 500
    # The floor: the binomial SE of the pooled proportion, sqrt(p (1 - p) / 1500) = 0.0129.
    assert same.high - same.low == pytest.approx(2 * 1.959964 * 0.01290, rel=0.01)
    assert same.high - same.low > 10 * (t_interval([0.510, 0.508, 0.510]).half_width or 0)


def test_variance_components_and_the_two_stage_bootstrap():
    values, ses = {0: 10.0, 1: 12.0, 2: 11.0}, {0: 0.5, 1: 0.5, 2: 0.5}
    parts = variance_components(values, ses)
    assert parts.between_sd == pytest.approx(1.0) and parts.within_sd == pytest.approx(0.5)
    assert parts.ratio == pytest.approx(2.0)
    # One seed: its value ± z SE.
    low, high = hierarchical_interval({0: 5.0}, {0: 1.0}, resamples=200_000)
    assert (low, high) == pytest.approx((5 - 1.96, 5 + 1.96), abs=0.02)
    # No sampling noise: the percentile bootstrap over seeds (scipy's, same resamples' law).
    seeds = {s: float(v) for s, v in enumerate(np.random.default_rng(1).normal(0, 1, 8))}
    low, high = hierarchical_interval(seeds, {}, resamples=100_000)
    theirs = stats.bootstrap(
        (np.array(list(seeds.values())),), np.mean, method="percentile", n_resamples=100_000,
        random_state=2,
    ).confidence_interval  # fmt: skip
    assert (low, high) == pytest.approx((theirs.low, theirs.high), abs=0.02)


def test_one_seed_gets_its_bootstrap_interval_on_the_logit_scale():
    """A single seed: the larger of its bootstrap SE and the binomial noise, z quantile."""
    from scipy.special import expit, logit

    nothing = proportion_interval([0.0], N, sampling_se=0.0)  # the table's 0.000 ± 0.000
    assert nothing.low == 0 and nothing.high > 0.001
    one = proportion_interval([0.3], N, sampling_se=0.03)  # above sqrt(.3 .7 / 500) = 0.0205
    pooled = (150 + 0.5) / (N + 1)
    half = stats.norm.ppf(0.975) * 0.03 / (pooled * (1 - pooled))
    assert (one.low, one.high) == pytest.approx(
        (expit(logit(pooled) - half), expit(logit(pooled) + half)), rel=1e-12
    )
