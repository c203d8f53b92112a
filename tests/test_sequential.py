"""The sequential design: its spending, its looks, and by simulation the family-wise error
under optional stopping and the power it keeps."""

import math

import numpy as np
import pytest

from bench.contrasts import decide, paired_contrast
from bench.sequential import SequentialDesign, simulate_sequential


def _pairs(rng, n):
    """A cell and its baseline, seed -> score, over seeds 0..n-1."""
    baseline = rng.normal(10, 1, n)
    cell = baseline + rng.normal(-0.5, 0.7, n)
    return dict(enumerate(cell)), dict(enumerate(baseline))


DESIGN = SequentialDesign(alpha=0.05, contrasts=4, looks=(3, 5, 7, 10))
STUDIES = 20_000
# Monte-Carlo SE of a family-wise error rate near 0.05 over 20,000 studies:
# sqrt(0.05 * 0.95 / 20,000) = 0.0015; asserted <= alpha + 3 SEs = 0.0546.
FWER_BOUND = 0.05 + 3 * math.sqrt(0.05 * 0.95 / STUDIES)


def test_the_spending_levels_add_up_to_alpha():
    assert DESIGN.levels == pytest.approx((0.00375, 0.0025, 0.0025, 0.00375))
    assert sum(DESIGN.levels) * DESIGN.contrasts == pytest.approx(0.05)
    assert DESIGN.spent(1) == pytest.approx(0.025) and DESIGN.is_last(3)
    with pytest.raises(ValueError):
        SequentialDesign(alpha=0.05, contrasts=4, looks=(5, 3))


def test_a_look_decides_at_its_level():
    cell, baseline = _pairs(np.random.default_rng(2), 5)
    c = paired_contrast(cell, baseline, direction="minimize")
    for k in range(len(DESIGN.looks)):
        expected = decide(c, alpha=DESIGN.level(k), min_effect=0.3, direction="minimize")
        assert DESIGN.decide(c, k, 0.3, "minimize") == expected


@pytest.mark.parametrize("correlation", [0.0, 0.5])
def test_optional_stopping_keeps_the_family_wise_error(correlation):
    rng = np.random.default_rng(int(correlation * 10))
    null = simulate_sequential(DESIGN, [0.0] * 4, 1.0, 0.5, STUDIES, rng, correlation=correlation)
    assert null.fwer <= FWER_BOUND, null.fwer
    assert null.mean_seeds <= 10
    # at the margin (true difference = min_effect): false "no meaningful difference" claims
    edge = simulate_sequential(DESIGN, [0.5] * 4, 1.0, 0.5, STUDIES, rng, correlation=correlation)
    assert edge.fwer <= FWER_BOUND, edge.fwer


def test_power_of_the_sequential_design():
    """Figures quoted in SequentialDesign's docstring (d_z 1.5: ~0.78; d_z 2: ~0.97)."""
    rng = np.random.default_rng(15)
    for effect, least in ((1.5, 0.7), (2.0, 0.93)):
        result = simulate_sequential(DESIGN, [effect] * 4, 1.0, None, STUDIES, rng)
        assert all(p > least for p in result.power), result.power
        assert result.fwer == 0 and max(result.mean_seeds_per_contrast) < 10
