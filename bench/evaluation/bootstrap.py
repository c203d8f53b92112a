"""Sampling uncertainty of one trial's scores: a bootstrap over its generated samples' features.

The N samples are resampled with replacement (the reference stays fixed) and FID and IS are
recomputed from the resampled features; the standard deviation over the resamples is the
standard error of the score due to drawing N samples, NOT the variation between training runs
(seeds). Resampling duplicates points, which biases bootstrap FIDs upward, so only their spread
is used: the tables show ±1.96 SE (a normal 95% interval) around the score itself.

Keys returned by `score(..., bootstrap=...)` and stored with the trial (Optuna user attr
"bootstrap", MLflow metrics of the same names): `bootstrap.fid.se`, `bootstrap.is_mean.se`,
`bootstrap.resamples`.

Cost: FID's trace term Tr (S1 S2)^1/2 equals the sum of the square roots of the eigenvalues of
R S1 R, where R = S2^1/2 is the reference's symmetric square root (cached with it), since
S1 S2 = S1 R R has the eigenvalues of R S1 R (bench.evaluation.metrics.TraceSqrt, which the
main FID and sFID use too). One resample then costs a weighted covariance
(N D^2) and one symmetric eigendecomposition (D^3), on the evaluator's device in float64:
about a second for D = 2048 on a CPU, milliseconds on a GPU; scipy's general sqrtm would take
several seconds. sFID, KID, precision and recall are not bootstrapped (their features are not
kept, or the k-NN manifold of a resample with duplicates is not the same estimator).
"""

import numpy as np
import torch

from bench.evaluation.metrics import TraceSqrt, frechet_from_trace, inception_score
from bench.evaluation.reference import Reference
from bench.evaluation.stream import FeatureStats

BOOTSTRAP_SEED = 0  # resamples are drawn from torch.Generator(BOOTSTRAP_SEED): repeatable
SMALL_DIM = 512  # pool features up to this many dims get AUTO_SMALL resamples, others AUTO_LARGE
AUTO_SMALL = 100
AUTO_LARGE = 20
BOOTSTRAPPED = ("fid", "is_mean")


def resample_count(requested: int, dim: int) -> int:
    """eval.bootstrap: N resamples, 0 none, -1 automatic (100 up to 512 dims, 20 above)."""
    if requested >= 0:
        return requested
    return AUTO_SMALL if dim <= SMALL_DIM else AUTO_LARGE


def bootstrap(
    stats: FeatureStats,
    reference: Reference,
    *,
    is_protocol: str,
    is_splits: int,
    resamples: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The bootstrap standard errors of FID and IS over `resamples` resamples of the samples.

    `stats` must hold every sample's pool features and logits (scoring keeps them).
    """
    if resamples < 2:
        return {}
    features = torch.as_tensor(stats.kept_pool(), dtype=torch.float64, device=device)
    logits = stats.all_logits()
    n = len(features)
    if n != stats.n or len(logits) != n:
        raise ValueError(f"bootstrap needs all {stats.n} samples' pool features and logits")
    mu2 = torch.as_tensor(reference.mu, dtype=torch.float64, device=device)
    sigma2 = torch.as_tensor(reference.sigma, dtype=torch.float64, device=device)
    trace = TraceSqrt(reference.root("sigma", device), device)
    centre = features.mean(0)
    centred = features - centre
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    fids, inception_scores = [], []
    for _ in range(resamples):
        index = torch.randint(n, (n,), generator=generator)
        weights = torch.bincount(index, minlength=n).to(centred)  # how often each sample is drawn
        mean = weights @ centred / n
        outer = (centred * weights[:, None]).T @ centred
        sigma1 = (outer - n * torch.outer(mean, mean)) / (n - 1)
        fids.append(frechet_from_trace(centre + mean, sigma1, mu2, sigma2, trace))
        inception_scores.append(inception_score(logits[index.numpy()], is_protocol, is_splits)[0])
    return {
        "bootstrap.fid.se": float(np.std(fids, ddof=1)),
        "bootstrap.is_mean.se": float(np.std(inception_scores, ddof=1)),
        "bootstrap.resamples": float(resamples),
    }
