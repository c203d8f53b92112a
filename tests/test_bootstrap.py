"""Per-trial bootstrap: the standard error's size, repeatability."""

import numpy as np
import torch

from bench.evaluation.bootstrap import bootstrap, resample_count
from bench.evaluation.metrics import frechet_distance
from bench.evaluation.reference import Reference
from bench.evaluation.stream import FeatureStats


def _gaussian(rng: np.random.Generator, n: int, dim: int, shift: float = 0.0) -> np.ndarray:
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(n, dim)) @ mixing + shift).astype(np.float32)


def _stats(features: np.ndarray, logits: np.ndarray) -> FeatureStats:
    stats = FeatureStats()
    stats.pool.update(torch.from_numpy(features))
    stats.spatial.update(torch.from_numpy(features))
    stats.pool_features.append(torch.from_numpy(features))
    stats.logits.append(torch.from_numpy(logits))
    return stats


def _reference(real: np.ndarray) -> Reference:
    mu, sigma = real.mean(0, dtype=np.float64), np.cov(real, rowvar=False)
    return Reference(mu, sigma, mu, sigma, None, None, {})


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
    errors = bootstrap(
        _stats(one_set, logits),
        reference,
        is_protocol="torch-fidelity",
        is_splits=10,
        resamples=200,
    )
    assert errors["bootstrap.resamples"] == 200
    assert 0.6 * true_se < errors["bootstrap.fid.se"] < 1.6 * true_se
    assert errors["bootstrap.is_mean.se"] > 0


def test_bootstrap_is_repeatable_and_zero_resamples_disable_it():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(100, 4)).astype(np.float32)
    logits = rng.normal(size=(100, 5)).astype(np.float32)
    reference = _reference(rng.normal(size=(500, 4)).astype(np.float32))
    first = bootstrap(
        _stats(features, logits), reference, is_protocol="torch-fidelity", is_splits=5, resamples=20
    )
    assert first == bootstrap(
        _stats(features, logits), reference, is_protocol="torch-fidelity", is_splits=5, resamples=20
    )
    assert (
        bootstrap(
            _stats(features, logits),
            reference,
            is_protocol="torch-fidelity",
            is_splits=5,
            resamples=0,
        )
        == {}
    )
    assert (resample_count(-1, 64), resample_count(-1, 2048), resample_count(7, 2048)) == (
        100,
        20,
        7,
    )
