"""Sampling uncertainty of one trial's scores: a bootstrap over its generated samples' features.

The N samples are resampled with replacement (the reference stays fixed) and every score that
declares `bootstrap` (bench.evaluation.scores) is recomputed on each resample's context
(ScoringContext.resample: the samples' moments, kept features and logits replaced by those of
`samples[index]`); the standard deviation over the resamples is the standard error of the score
due to drawing N samples, NOT the variation between training runs (seeds). Resampling
duplicates points, which biases some resampled values (FIDs upward; a duplicated sample is its
own nearest neighbour, which shrinks the samples' k-NN radii behind recall), so only their
spread is used: the tables show ±1.96 SE (a normal 95% interval) around the score itself.

Keys returned by `score(..., bootstrap=...)` and stored with the trial (Optuna user attr
"bootstrap", MLflow metrics of the same names): `bootstrap.<score>.se` for each bootstrapped
score whose value is finite, and `bootstrap.resamples`.

Cost per resample, N samples, D pool and S spatial dimensions, M reference features:
FID and sFID a weighted covariance (N D^2, N S^2) and one symmetric eigendecomposition (D^3,
S^3) on the evaluator's device in float64 (FID's trace term Tr (S1 S2)^1/2 is the sum of the
square roots of the eigenvalues of R S1 R, R the reference's cached root:
bench.evaluation.formulas.TraceSqrt); the IS a softmax over N logits; KID clean-fid's 100
subsets of at most 1,000 samples (numpy, on the CPU: seconds at D = 2048); precision and recall
one k-NN pass (N M D + N^2 D, on the device). Memory: bootstrapping sFID keeps every sample's
spatial features (N S float32 on the CPU, e.g. 50,000 x 2,023 Inception features: 405 MB, as
much again as the pool features kept anyway) and float64 centred copies of the pool and spatial
features on the device (N (D + S) x 8 bytes) while the resamples run.
"""

import math

import numpy as np
import torch

from bench.evaluation import scores as score_registry
from bench.evaluation.context import ScoringContext
from bench.evaluation.scores import MissingInput

BOOTSTRAP_SEED = 0  # resamples are drawn from torch.Generator(BOOTSTRAP_SEED): repeatable
SMALL_DIM = 512  # pool features up to this many dims get AUTO_SMALL resamples, others AUTO_LARGE
AUTO_SMALL = 100
AUTO_LARGE = 20


def resample_count(requested: int, dim: int) -> int:
    """eval.bootstrap: N resamples, 0 none, -1 automatic (100 up to 512 dims, 20 above)."""
    if requested >= 0:
        return requested
    return AUTO_SMALL if dim <= SMALL_DIM else AUTO_LARGE


def resample_indices(n: int, resamples: int) -> list[np.ndarray]:
    """The [n] sample indices of each resample, drawn with replacement (repeatable)."""
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    return [torch.randint(n, (n,), generator=generator).numpy() for _ in range(resamples)]


def bootstrap(
    ctx: ScoringContext, values: dict[str, float], resamples: int, *, every: bool = True
) -> dict[str, float]:
    """The bootstrap standard errors of the bootstrappable scores over `resamples` resamples.

    `values` are the scores of `ctx` itself: a score that is NaN there (its inputs missing) is
    not resampled. A score whose input the resample lacks (MissingInput) gets no error.
    `every` False (eval.bootstrap automatic) leaves out the scores not bootstrapped by default
    (`Score.bootstrap_by_default`: KID, whose resamples cost more than the trial).
    """
    if resamples < 2:
        return {}
    chosen = [
        s
        for s in score_registry.scores()
        if s.bootstrap
        and (every or s.bootstrap_by_default)
        and math.isfinite(values.get(s.name, math.nan))
    ]
    draws: dict[str, list[float]] = {s.name: [] for s in chosen}
    for index in resample_indices(ctx.n, resamples):
        resampled = ctx.resample(index)
        for score in list(chosen):
            try:
                draws[score.name].append(float(score.load()(resampled)))
            except MissingInput:
                chosen.remove(score)
                del draws[score.name]
    errors = {f"bootstrap.{name}.se": float(np.std(v, ddof=1)) for name, v in draws.items()}
    return {**errors, "bootstrap.resamples": float(resamples)} if errors else {}
