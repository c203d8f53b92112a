"""Sequential seeds: look at a study's declared contrasts after 3, 5, ... seeds and stop each
as soon as it is decided, with the family-wise error still at most alpha.

The design and its operating characteristics (bench.contrasts decides each look). Not yet
driven by `bench run`: a study's storage is tied to its seed axis (docs/DESIGN.md, "Answers"),
so adding seeds in rounds waits for the orchestration on Optuna's enqueued trials.

Lan, K.K.G. & DeMets, D.L. (1983) Discrete sequential boundaries for clinical trials,
Biometrika 70:659-663. Kim, K. & DeMets, D.L. (1987) Design and analysis of group sequential
tests based on the type I error spending rate function, Biometrika 74:149-154.
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.contrasts import DECISIONS, Contrast, Direction, decide

_BETTER, _WORSE, _EQUIVALENT, _UNDECIDED = range(len(DECISIONS))


@dataclass(frozen=True)
class SequentialDesign:
    """Looks at the data after looks[k] seeds, with a valid rule for stopping early.

    The family's alpha is spent over the looks by the linear spending function (Lan & DeMets
    1983; the power family with rho = 1, Kim & DeMets 1987): alpha * n_k / n_max spent up to
    look k, each look tested at its increment, alpha (n_k - n_{k-1}) / n_max, split equally over
    the contrasts (Bonferroni). The increments add up to alpha over all looks and contrasts,
    so by the union bound the family-wise error is at most alpha whatever the dependence
    between looks and contrasts (the boundaries ignore that correlation, so they are
    conservative). At each look a contrast still open is decided ("better"/"worse" when its
    paired t-test's p <= the look's level; "no meaningful difference" by TOST at that level,
    when a smallest effect that matters is given) and stops; the others go on; what is
    undecided at the last look stays undecided. At each look only one wrong claim is possible
    for a given truth, with probability at most the look's level, so the bound covers both
    kinds of claim together.

    The looks and their seed counts must be fixed before the data are seen. A look that
    happens to hold fewer seeds than planned is still valid (its level does not depend on n),
    only less powerful.

    Simulated (tests/test_sequential.py, 4 contrasts, looks 3, 5, 7, 10, alpha 0.05, normal
    differences of SD 1, 20,000 studies): family-wise error 0.044 under the global null (0.043
    with the contrasts correlated 0.5, as against one shared baseline); false "no meaningful
    difference" at a true difference equal to min_effect, 0.007-0.008. Power per contrast:
    0.78 at a true d_z of 1.5 (a cell stops after 8.6 seeds on average, a study after 9.95:
    some contrast is nearly always still open), 0.97 at d_z 2 (7.45 and 9.47 seeds). The
    price of looking: a single look at 10 seeds at alpha / 4 has power 0.92 and 0.996. With 3
    seeds the first look's level (0.00375) needs an observed d_z above 9.4: linear spending
    puts 30% of alpha where only huge effects can use it (a spending function that spends less
    early, of the O'Brien-Fleming type, would keep more power for the last look).
    """

    alpha: float
    contrasts: int
    looks: tuple[int, ...]
    levels: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        looks = tuple(self.looks)
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.contrasts < 1:
            raise ValueError("a design needs at least one contrast")
        if not looks or looks[0] < 2 or any(b <= a for a, b in itertools.pairwise(looks)):
            raise ValueError("looks must be increasing seed counts, the first at least 2")
        spent = [self.alpha * n / looks[-1] for n in (0, *looks)]
        levels = tuple((b - a) / self.contrasts for a, b in itertools.pairwise(spent))
        object.__setattr__(self, "looks", looks)
        object.__setattr__(self, "levels", levels)

    def level(self, look_index: int) -> float:
        """Each contrast's test level at look `look_index` (0-based): its alpha increment."""
        return self.levels[look_index]

    def spent(self, look_index: int) -> float:
        """The family's alpha spent up to and including look `look_index`."""
        return self.alpha * self.looks[look_index] / self.looks[-1]

    def is_last(self, look_index: int) -> bool:
        """Whether `look_index` is the final look (undecided then means undecided)."""
        return look_index == len(self.looks) - 1

    def decide(
        self,
        contrast: Contrast,
        look_index: int,
        min_effect: float | None,
        direction: Direction,
    ) -> str:
        """The contrast's decision at this look; "undecided" before the last look: go on."""
        return decide(
            contrast, alpha=self.level(look_index), min_effect=min_effect, direction=direction
        )


@dataclass(frozen=True)
class SimulationResult:
    """Operating characteristics of a sequential design over simulated studies."""

    sims: int
    fwer: float  # share of studies with at least one wrong claim
    fwer_se: float  # its Monte-Carlo standard error, sqrt(fwer (1 - fwer) / sims)
    rates: Mapping[str, tuple[float, ...]]  # decision -> its rate, per contrast
    power: tuple[float, ...]  # per contrast: rate of the right better/worse (nan: no effect)
    mean_seeds: float  # seeds trained per study: the baseline runs until no contrast is open
    mean_seeds_per_contrast: tuple[float, ...]  # seeds at which each contrast stopped


def simulate_sequential(
    design: SequentialDesign,
    true_differences: Sequence[float],
    sd: float,
    min_effect: float | None,
    sims: int,
    rng: np.random.Generator,
    *,
    direction: Direction = "maximize",
    correlation: float = 0.0,
) -> SimulationResult:
    """Simulate `sims` studies under `design`: per contrast, per seed, differences
    Normal(true difference, sd), contrasts equicorrelated by `correlation` (0.5: cells against
    one shared baseline with equal variances). Vectorised over studies and contrasts.

    A wrong claim: "better"/"worse" on a contrast with no true difference, or of the wrong
    sign; "no meaningful difference" on one whose true difference is at least min_effect.
    """
    truth = np.asarray(true_differences, dtype=float)
    if len(truth) != design.contrasts:
        raise ValueError("one true difference per contrast of the design")
    d = truth[None, :, None] + sd * _correlated_normals(
        rng, (sims, len(truth), design.looks[-1]), correlation
    )
    codes = np.full((sims, len(truth)), _UNDECIDED)
    used = np.full((sims, len(truth)), design.looks[-1])
    for k, n in enumerate(design.looks):
        seen = d[:, :, :n]
        now = _decision_codes(
            seen.mean(axis=2),
            seen.std(axis=2, ddof=1) / math.sqrt(n),
            n - 1,
            design.level(k),
            min_effect,
            direction,
        )
        stop = (codes == _UNDECIDED) & (now != _UNDECIDED)
        codes[stop] = now[stop]
        used[stop] = n
    return _summarise(codes, used, truth, min_effect, direction)


def _correlated_normals(
    rng: np.random.Generator, shape: tuple[int, int, int], correlation: float
) -> np.ndarray:
    """Standard normals [sims, contrasts, seeds], equicorrelated across contrasts."""
    own = rng.standard_normal(shape)
    if correlation == 0:
        return own
    shared = rng.standard_normal((shape[0], 1, shape[2]))
    return math.sqrt(1 - correlation) * own + math.sqrt(correlation) * shared


def _summarise(
    codes: np.ndarray,
    used: np.ndarray,
    truth: np.ndarray,
    min_effect: float | None,
    direction: Direction,
) -> SimulationResult:
    """Error, decision rates, power and seeds of simulated decisions [sims, contrasts]."""
    gain = -truth if direction == "minimize" else truth
    right = np.where(gain > 0, _BETTER, np.where(gain < 0, _WORSE, -1))
    wrong_sign = np.where(gain > 0, _WORSE, np.where(gain < 0, _BETTER, -1))
    null = gain == 0
    differs = (codes == _BETTER) | (codes == _WORSE)
    wrong = (differs & null) | (codes == wrong_sign)
    if min_effect is not None:
        wrong |= (codes == _EQUIVALENT) & (np.abs(truth) >= min_effect)
    fwer = float(wrong.any(axis=1).mean())
    sims = len(codes)
    power = np.where(null, np.nan, (codes == right).mean(axis=0))
    return SimulationResult(
        sims=sims,
        fwer=fwer,
        fwer_se=math.sqrt(fwer * (1 - fwer) / sims),
        rates={
            name: tuple(float(r) for r in (codes == i).mean(axis=0))
            for i, name in enumerate(DECISIONS)
        },
        power=tuple(float(p) for p in power),
        mean_seeds=float(used.max(axis=1).mean()),
        mean_seeds_per_contrast=tuple(float(s) for s in used.mean(axis=0)),
    )


def _decision_codes(
    mean: np.ndarray,
    se: np.ndarray,
    df: int,
    alpha: float,
    min_effect: float | None,
    direction: Direction,
    *,
    test_difference: bool = True,
) -> np.ndarray:
    """Indices into DECISIONS for contrasts with mean differences `mean`, standard errors `se`
    and df degrees of freedom, at level alpha (the array form of `decide`)."""
    from scipy import special

    codes = np.full(mean.shape, _UNDECIDED)
    valid = np.isfinite(se) & (se > 0)
    if test_difference:
        reject = valid & (np.abs(mean) >= special.stdtrit(df, 1 - alpha / 2) * se)
        better = (mean < 0) if direction == "minimize" else (mean > 0)
        codes[reject] = np.where(better[reject], _BETTER, _WORSE)
    if min_effect is not None:
        half = special.stdtrit(df, 1 - alpha) * se
        inside = valid & (mean - half > -min_effect) & (mean + half < min_effect)
        codes[inside & (codes == _UNDECIDED)] = _EQUIVALENT
    return codes
