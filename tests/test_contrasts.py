"""bench.contrasts against the reference libraries on fixed data, and by simulation against
known truth (every simulated rate with a tolerance derived from its number of simulations)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttost_paired

from bench.contrasts import (
    decide,
    decide_family,
    exact_test_can_reach,
    holm,
    min_exact_p,
    minimal_detectable_effect,
    paired_contrast,
    seeds_needed,
)


def _pairs(rng, n):
    """A cell and its baseline, seed -> score, over seeds 0..n-1."""
    baseline = rng.normal(10, 1, n)
    cell = baseline + rng.normal(-0.5, 0.7, n)
    return dict(enumerate(cell)), dict(enumerate(baseline))


# --- Paired contrasts against scipy / statsmodels -----------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_paired_t_interval_and_p_are_scipys(n):
    cell, baseline = _pairs(np.random.default_rng(n), n)
    c = paired_contrast(cell, baseline, direction="minimize", confidence=0.9)
    a, b = np.array(list(cell.values())), np.array(list(baseline.values()))
    reference = stats.ttest_rel(a, b)
    ci = reference.confidence_interval(0.9)
    assert c.ci_low == pytest.approx(ci.low, rel=1e-12, abs=1e-12)
    assert c.ci_high == pytest.approx(ci.high, rel=1e-12, abs=1e-12)
    assert c.p_t == pytest.approx(reference.pvalue, rel=1e-12, abs=1e-12)
    d = a - b
    assert c.differences == pytest.approx(tuple(d), abs=1e-15) and c.n == n
    assert c.difference == pytest.approx(d.mean()) and c.sd == pytest.approx(d.std(ddof=1))
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))


def _brute_force_sign_flip_p(d):
    """P(|mean of sign-flipped d| >= |mean d|) over all 2^n sign patterns, equally likely."""
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=len(d))))
    null = (signs * d).mean(axis=1)
    return float(np.mean(np.abs(null) >= abs(d.mean()) * (1 - 1e-12)))


@pytest.mark.parametrize("n", range(3, 9))
def test_the_exact_p_enumerates_all_sign_flips(n):
    rng = np.random.default_rng(100 + n)
    baseline = rng.normal(0, 1, n)
    for d in (rng.normal(0.4, 1, n), np.r_[np.ones(n - 1), -1.0], np.abs(rng.normal(0, 1, n))):
        c = paired_contrast(
            dict(enumerate(baseline + d)), dict(enumerate(baseline)), direction="maximize"
        )
        expected = _brute_force_sign_flip_p(np.array(c.differences))
        assert c.p_exact == pytest.approx(expected, abs=1e-12)
    assert c.p_exact == pytest.approx(c.min_p_exact)  # all positive: the two extreme patterns


def test_the_smallest_exact_p():
    assert min_exact_p(3) == 0.25 and min_exact_p(10) == pytest.approx(1 / 512)
    assert not exact_test_can_reach(5, 0.05)  # 0.0625
    assert exact_test_can_reach(6, 0.05)  # 0.03125
    assert not exact_test_can_reach(6, 0.05 / 4)  # Holm's first step over 4 contrasts
    c = paired_contrast({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.5, 2: 0.7}, direction="maximize")
    assert c.min_p_exact == 0.25 and c.p_exact == 0.25


def test_probability_of_improvement_and_its_wilson_interval():
    # FID (lower is better): the cell is better on seeds 0, 3 and 4, ties on 2, worse on 1.
    cell = {0: 9.0, 1: 12.0, 2: 10.0, 3: 8.0, 4: 6.5}
    baseline = {0: 10.0, 1: 11.0, 2: 10.0, 3: 9.0, 4: 7.0}
    c = paired_contrast(cell, baseline, direction="minimize", confidence=0.9)
    assert c.improvement_probability == pytest.approx(3.5 / 5)
    low, high = proportion_confint(3.5, 5, alpha=0.1, method="wilson")
    assert c.improvement_ci == pytest.approx((low, high), abs=1e-12)
    # Wilson (1927) by hand: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, p, n = stats.norm.ppf(0.95), 0.7, 5
    centre, half = p + z**2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert c.improvement_ci[0] == pytest.approx((centre - half) / (1 + z**2 / n), abs=1e-12)
    flipped = paired_contrast(cell, baseline, direction="maximize")
    assert flipped.improvement_probability == pytest.approx(1.5 / 5)


def test_contrasts_without_spread_are_undecided_not_certain():
    same = paired_contrast({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0}, direction="maximize")
    assert same.sd == 0 and math.isnan(same.p_t) and math.isnan(same.effect_size)
    assert math.isnan(same.ci_low) and same.p_exact == 1.0
    # 10.3 - 10 and 11.3 - 11 differ by rounding only: the same difference, not a t of 1e15.
    shifted = paired_contrast(
        {0: 10.3, 1: 11.3, 2: 12.3}, {0: 10, 1: 11, 2: 12}, direction="maximize"
    )
    assert shifted.sd == 0 and shifted.effect_size == math.inf and math.isnan(shifted.p_t)
    assert shifted.p_exact == 0.25
    assert decide(shifted, alpha=0.05, min_effect=1.0, direction="maximize") == "undecided"
    assert paired_contrast({0: 1.0, 1: 2.0}, {1: 2.5, 2: 3.0}, direction="maximize") is None


# --- Decisions ----------------------------------------------------------------------------------


def test_holm_is_statsmodels_and_a_hand_check():
    p = list(np.random.default_rng(7).uniform(0, 0.1, 12))
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-15)
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


@pytest.mark.parametrize("seed", range(6))
def test_decide_is_the_t_interval_and_tost(seed):
    rng = np.random.default_rng(seed)
    n, alpha, margin = 6, 0.05, 0.8
    baseline = rng.normal(10, 1, n)
    cell = baseline + rng.normal(rng.choice([-1.0, 0.0, 0.2]), 0.5, n)
    c = paired_contrast(dict(enumerate(cell)), dict(enumerate(baseline)), direction="minimize")
    decision = decide(c, alpha=alpha, min_effect=margin, direction="minimize")
    ci = stats.ttest_rel(cell, baseline).confidence_interval(1 - alpha)
    tost_p = ttost_paired(cell, baseline, -margin, margin)[0]
    if ci.high < 0:
        assert decision == "better"
    elif ci.low > 0:
        assert decision == "worse"
    elif tost_p <= alpha:
        assert decision == "no meaningful difference"
    else:
        assert decision == "undecided"
    with pytest.raises(ValueError, match="direction"):
        decide(c, alpha=alpha, min_effect=None, direction="maximize")


def test_a_family_is_decided_by_holm_then_tost_at_alpha_over_m():
    rng = np.random.default_rng(3)
    baseline = dict(enumerate(rng.normal(20, 1, 8)))

    def cell(shift, noise):
        return {s: v + shift + rng.normal(0, noise) for s, v in baseline.items()}

    family = [
        paired_contrast(cell(-3.0, 0.5), baseline, direction="minimize"),  # clearly lower FID
        paired_contrast(cell(2.0, 0.5), baseline, direction="minimize"),  # clearly higher
        paired_contrast(cell(0.0, 0.05), baseline, direction="minimize"),  # tight around 0
        paired_contrast(cell(0.3, 2.0), baseline, direction="minimize"),  # noisy
        None,  # a cell with no common seeds
    ]
    decisions = decide_family(family, alpha=0.05, min_effect=0.5, direction="minimize")
    assert decisions == ["better", "worse", "no meaningful difference", "undecided", "undecided"]
    adjusted = holm([c.p_t for c in family[:4]] + [1.0])
    for p, d in zip(adjusted, decisions, strict=True):
        assert (p <= 0.05) == (d in ("better", "worse"))
    tight = family[2]  # equivalence at alpha / m = 0.01: the 98% interval inside ±0.5
    ci = stats.ttest_1samp(tight.differences, 0).confidence_interval(1 - 2 * 0.05 / 5)
    assert ci.low > -0.5 and ci.high < 0.5
    assert (
        decide_family(family, alpha=0.05, min_effect=None, direction="minimize")[2] == "undecided"
    )


# --- Power -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "alpha"), [(3, 0.05), (5, 0.05 / 4), (10, 0.05 / 60)])
def test_minimal_detectable_effect_is_statsmodels(n, alpha):
    effect = TTestPower().solve_power(nobs=n, alpha=alpha, power=0.8, alternative="two-sided")
    assert minimal_detectable_effect(2.0, n, alpha) == pytest.approx(2.0 * effect, rel=1e-9)
    assert minimal_detectable_effect(2.0, 1, alpha) == math.inf


@pytest.mark.parametrize(("effect", "alpha"), [(1.0, 0.05), (1.5, 0.05 / 4), (0.5, 0.05 / 60)])
def test_seeds_needed_is_statsmodels_rounded_up(effect, alpha):
    n = TTestPower().solve_power(
        effect_size=effect, alpha=alpha, power=0.8, alternative="two-sided"
    )
    assert seeds_needed(3.0, -effect * 3.0, alpha) == math.ceil(n)
    assert seeds_needed(3.0, 0.01, alpha, max_seeds=50) is None


def test_the_power_holds_in_simulation():
    """Differences ~ Normal(MDE, 1), 5 seeds, t-test at 0.05 / 4: rejects 80% of the time,
    within 3 Monte-Carlo SEs (sqrt(0.8 * 0.2 / 20,000) = 0.0028)."""
    sims, n, alpha = 20_000, 5, 0.05 / 4
    mde = minimal_detectable_effect(1.0, n, alpha)
    d = np.random.default_rng(9).normal(mde, 1.0, (sims, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rate = np.mean(2 * stats.t.sf(np.abs(t), n - 1) <= alpha)
    assert abs(rate - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / sims)
