"""Per-trial bootstrap: every bootstrappable score, checked against independent recomputation."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import torch

from bench.evaluation import scores as score_registry
from bench.evaluation.bootstrap import (
    bootstrap,
    resample_count,
    resample_indices,
)
from bench.evaluation.context import ScoringContext
from bench.evaluation.formulas import KID_SEED, PR_NEIGHBOURS, frechet_distance
from bench.evaluation.reference import Reference
from bench.evaluation.scores import ScoreSettings
from bench.evaluation.scoring import _scores
from bench.evaluation.stream import FeatureStats
from bench.intervals import se_uncertainty

EVALUATOR = SimpleNamespace(device=torch.device("cpu"), label="test features")
SETTINGS = ScoreSettings("torch-fidelity", 5)


def _gaussian(rng: np.random.Generator, n: int, dim: int, shift: float = 0.0) -> np.ndarray:
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(n, dim)) @ mixing + shift).astype(np.float32)


def _stats(
    features: np.ndarray, logits: np.ndarray, spatial: np.ndarray | None = None
) -> FeatureStats:
    stats = FeatureStats()
    spatial = features if spatial is None else spatial
    stats.pool.update(torch.from_numpy(features))
    stats.spatial.update(torch.from_numpy(spatial))
    stats.pool_features.append(torch.from_numpy(features))
    stats.spatial_features.append(torch.from_numpy(spatial))
    stats.logits.append(torch.from_numpy(logits))
    return stats


def _reference(real: np.ndarray, spatial: np.ndarray | None = None, keep: bool = False):
    spatial = real if spatial is None else spatial
    moments = [(x.mean(0, dtype=np.float64), np.cov(x, rowvar=False)) for x in (real, spatial)]
    features = real if keep else None
    radii = _knn_radii(real) if keep else None
    return Reference(*moments[0], *moments[1], features, radii, {})


def _context(stats: FeatureStats, reference: Reference, settings=SETTINGS) -> ScoringContext:
    return ScoringContext(stats, reference, EVALUATOR, settings)


# Independent references: scipy's sqrtm, scipy's softmax, clean-fid's KID, brute-force k-NN.


def _fid_scipy(x: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu1, sigma1 = x.mean(0, dtype=np.float64), np.cov(x.astype(np.float64), rowvar=False)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * root))


def _is_torch_fidelity(logits: np.ndarray, splits: int) -> float:
    n = len(logits)
    p = scipy.special.softmax(logits.astype(np.float64), axis=1)
    p = p[np.random.RandomState(2020).permutation(n)]
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = (part * (np.log(part) - np.log(part.mean(0)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def _kid_cleanfid(x: np.ndarray, y: np.ndarray) -> float:
    from cleanfid.fid import kernel_distance

    np.random.seed(KID_SEED)
    return float(kernel_distance(x, y))


def _knn_radii(x: np.ndarray) -> np.ndarray:
    d = scipy.spatial.distance.cdist(x, x, "sqeuclidean")
    return np.sort(d, axis=1)[:, PR_NEIGHBOURS].astype(np.float32)


def _precision_recall_brute(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    d = scipy.spatial.distance.cdist(fake, real, "sqeuclidean")  # [F, R]
    precision = (d <= _knn_radii(real)[None, :]).any(1).mean()
    recall = (_knn_radii(fake)[None, :] >= d.T).any(1).mean()
    return float(precision), float(recall)


def test_bootstrap_standard_error_matches_the_spread_over_fresh_sample_sets():
    """The bootstrap SE of one set of N samples estimates the std of FID over many fresh sets."""
    rng = np.random.default_rng(0)
    dim, n = 8, 400
    reference = _reference(rng.normal(size=(20000, dim)).astype(np.float32))
    logits = rng.normal(size=(n, 10)).astype(np.float32)
    fresh = []
    for _ in range(300):
        x = rng.normal(0.2, 1.0, size=(n, dim)).astype(np.float32)
        mu, sigma = x.mean(0, dtype=np.float64), np.cov(x, rowvar=False)
        fresh.append(frechet_distance(mu, sigma, reference.mu, reference.sigma, "fresh"))
    true_se = np.std(fresh, ddof=1)
    one_set = rng.normal(0.2, 1.0, size=(n, dim)).astype(np.float32)
    ctx = _context(_stats(one_set, logits), reference, ScoreSettings("torch-fidelity", 10))
    errors = _scores(ctx, 200)
    assert errors["bootstrap.resamples"] == 200
    assert 0.6 * true_se < errors["bootstrap.fid.se"] < 1.6 * true_se
    assert errors["bootstrap.is_mean.se"] > 0


def test_every_bootstrappable_score_has_the_se_of_its_independent_recomputation():
    """Each resample's value equals the score recomputed from scratch on samples[index] (scipy,
    clean-fid, brute-force k-NN), and the SE is the std (ddof 1) of those recomputations."""
    rng = np.random.default_rng(3)
    n, dim, sdim = 60, 5, 4
    real, real_s = _gaussian(rng, 300, dim), _gaussian(rng, 300, sdim)
    fake, fake_s = _gaussian(rng, n, dim, 0.3), _gaussian(rng, n, sdim, 0.2)
    logits = rng.normal(size=(n, 6)).astype(np.float32)
    reference = _reference(real, real_s, keep=True)
    ctx = _context(_stats(fake, logits, fake_s), reference)
    resamples = 6
    values = _scores(ctx)
    errors = bootstrap(ctx, values, resamples)
    expected = {name: [] for name in ("fid", "sfid", "is_mean", "kid", "precision", "recall")}
    for index in resample_indices(n, resamples):
        x, xs = fake[index], fake_s[index]
        resampled = ctx.resample(index)
        independent = {
            "fid": _fid_scipy(x, reference.mu, reference.sigma),
            "sfid": _fid_scipy(xs, reference.mu_s, reference.sigma_s),
            "is_mean": _is_torch_fidelity(logits[index], 5),
            "kid": _kid_cleanfid(x, real),
        }
        independent["precision"], independent["recall"] = _precision_recall_brute(real, x)
        for name, value in independent.items():
            got = score_registry.get(name).load()(resampled)
            assert got == pytest.approx(value, rel=1e-6, abs=1e-9), name
            expected[name].append(value)
    assert set(errors) == {f"bootstrap.{k}.se" for k in expected} | {"bootstrap.resamples"}
    for name, draws in expected.items():
        assert errors[f"bootstrap.{name}.se"] == pytest.approx(
            np.std(draws, ddof=1), rel=1e-6, abs=1e-12
        ), name
    assert "bootstrap.is_std.se" not in errors  # is_std declares no bootstrap (a spread itself)


def test_resampled_moments_equal_numpy_on_the_resampled_rows():
    rng = np.random.default_rng(4)
    fake = _gaussian(rng, 50, 3)
    ctx = _context(_stats(fake, rng.normal(size=(50, 4)).astype(np.float32)), _reference(fake))
    index = resample_indices(50, 1)[0]
    mean, cov = ctx.resample(index).moments("pool")
    np.testing.assert_allclose(mean, fake[index].mean(0, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(fake[index].astype(np.float64), rowvar=False), 1e-10)


def test_scores_that_cannot_be_computed_are_nan_and_get_no_error():
    """Without reference features KID, precision and recall are NaN and not bootstrapped; a
    pass that kept no spatial features gets no sFID error (nothing else is lost)."""
    rng = np.random.default_rng(5)
    fake = _gaussian(rng, 40, 3)
    stats = _stats(fake, rng.normal(size=(40, 4)).astype(np.float32))
    stats.spatial_features.clear()
    result = _scores(_context(stats, _reference(_gaussian(rng, 200, 3))), 5)
    assert all(np.isnan(result[k]) for k in ("kid", "precision", "recall"))
    assert set(result) - set(score_registry.names()) == {
        "bootstrap.fid.se",
        "bootstrap.is_mean.se",
        "bootstrap.resamples",
    }


def test_bootstrap_is_repeatable_and_zero_resamples_disable_it():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(100, 4)).astype(np.float32)
    logits = rng.normal(size=(100, 5)).astype(np.float32)
    reference = _reference(rng.normal(size=(500, 4)).astype(np.float32))
    first = _scores(_context(_stats(features, logits), reference), 20)
    assert first == _scores(_context(_stats(features, logits), reference), 20)
    assert not any(
        k.startswith("bootstrap.")
        for k in _scores(_context(_stats(features, logits), reference), 0)
    )
    assert (resample_count(-1, 64), resample_count(-1, 2048), resample_count(7, 2048)) == (
        100,
        20,
        7,
    )


def test_the_automatic_bootstrap_leaves_kid_out_and_an_explicit_count_includes_it():
    rng = np.random.default_rng(3)
    real, real_s = _gaussian(rng, 60, 8), _gaussian(rng, 60, 5)
    fake, fake_s = _gaussian(rng, 40, 8, 0.3), _gaussian(rng, 40, 5, 0.2)
    ctx = _context(_stats(fake, rng.normal(size=(40, 6)).astype(np.float32), fake_s),
                   _reference(real, real_s, keep=True))  # fmt: skip
    values = _scores(ctx)
    automatic = bootstrap(ctx, values, 4, every=False)
    explicit = bootstrap(ctx, values, 4)
    assert "bootstrap.kid.se" not in automatic and "bootstrap.kid.se" in explicit
    assert {k: v for k, v in explicit.items() if k != "bootstrap.kid.se"} == automatic


@pytest.mark.parametrize("resamples", [20, 100])
def test_the_stated_uncertainty_of_a_bootstrap_se_is_its_spread_by_simulation(resamples):
    """se_uncertainty(B): the coefficient of variation of an SD from B normal values. Checked
    by 20,000 simulated SDs: the CV estimate's own relative standard error is about
    sqrt((1 + CV^2) / (2 R)) ~ 0.5% at R = 20,000, so 3% relative is over 5 of them."""
    sims = 20_000
    draws = np.random.default_rng(resamples).normal(size=(sims, resamples))
    sds = draws.std(axis=1, ddof=1)
    assert se_uncertainty(resamples) == pytest.approx(sds.std() / sds.mean(), rel=0.03)
    # The figures quoted in the tables' captions and the docs.
    assert round(se_uncertainty(20), 2) == 0.16 and round(se_uncertainty(100), 2) == 0.07
