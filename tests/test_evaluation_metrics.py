"""FID/sFID, IS, KID and precision/recall against closed forms and independent implementations."""

import numpy as np
import pytest
import torch
from cleanfid.fid import fid_from_feats, kernel_distance
from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import protocols
from bench.evaluation.formulas import (
    TraceSqrt,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    manifold_radii,
    precision_recall,
    psd_sqrt,
)
from bench.evaluation.stream import Moments
from casdm.config import ConfigError


def streamed(features: np.ndarray, batch: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance through Moments, fed in uneven batches."""
    moments = Moments()
    for chunk in torch.from_numpy(features).split(batch):
        moments.update(chunk)
    return moments.mean(), moments.cov()


def heusel_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al. 2017, independently: tr (S1 S2)^1/2 = tr (S1^1/2 S2 S1^1/2)^1/2 (eigh)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(
        ((mu1 - mu2) ** 2).sum()
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    )


@pytest.fixture
def two_sets() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    return a.astype(np.float32), b.astype(np.float32)


def test_fid_agrees_with_cleanfid_and_an_independent_implementation(two_sets):
    a, b = two_sets
    fid = frechet_distance(*streamed(a), *streamed(b, batch=50), "FID")
    assert fid > 1  # the sets differ: a vacuous 0 would pass the comparisons below too
    assert fid == pytest.approx(fid_from_feats(a, b), rel=1e-6)
    assert fid == pytest.approx(heusel_fid(a.astype(np.float64), b.astype(np.float64)), rel=1e-6)


def _inception_like(rng: np.random.Generator, n: int, dim: int, shift: float) -> np.ndarray:
    """Non-negative, correlated features (a ReLU of mixed Gaussians), as Inception's pool3."""
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return np.maximum(rng.normal(size=(n, dim)) @ mixing + shift, 0).astype(np.float32)


@pytest.mark.parametrize(
    "dim, n1",
    [
        (512, 1500),  # both covariances of full rank
        (512, 300),  # the samples' covariance singular (rank 299 of 512)
        pytest.param(2048, 3000, marks=pytest.mark.slow),  # Inception's size: a 20 s sqrtm
    ],
)
def test_fid_equals_cleanfids_frechet_distance_on_inception_sized_covariances(dim, n1):
    """The eigh trace term against clean-fid's scipy sqrtm, relative 1e-6 (measured: 1e-14 at
    full rank, 2e-9 with a singular S1, at 2048 dimensions)."""
    rng = np.random.default_rng(dim + n1)
    a, b = _inception_like(rng, n1, dim, 0.2), _inception_like(rng, 3 * dim // 2, dim, 0.0)
    mu1, s1 = a.mean(0, dtype=np.float64), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0, dtype=np.float64), np.cov(b, rowvar=False)
    expected = cleanfid_frechet_distance(mu1, s1, mu2, s2)
    root = psd_sqrt(s2)
    np.testing.assert_allclose(root @ root, s2, atol=1e-10 * np.abs(s2).max())
    fid = frechet_distance(mu1, s1, mu2, s2, "FID", root2=root)  # the reference's cached root
    assert fid == pytest.approx(expected, rel=1e-6)
    if dim < 2048:  # without it (the root computed inside: two more 2048-d eigh, 4-9 s)
        assert frechet_distance(mu1, s1, mu2, s2, "FID") == pytest.approx(expected, rel=1e-6)


def test_the_trace_term_is_right_for_singular_covariances():
    """Rank-deficient S1 and S2 (clean-fid would offset them by 1e-6 I if sqrtm failed): the
    eigendecomposition needs no offset, its Tr (S1 S2)^1/2 against the closed form for commuting
    S1, S2. Zero eigenvalues come out as +-1e-16 or so, each adding up to its square root."""
    rng = np.random.default_rng(3)
    basis, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    d1 = np.where(np.arange(64) < 20, rng.uniform(0.5, 2, 64), 0.0)  # rank 20
    d2 = np.where(np.arange(64) >= 10, rng.uniform(0.5, 2, 64), 0.0)  # rank 54
    s1, s2 = (basis * d1) @ basis.T, (basis * d2) @ basis.T
    assert TraceSqrt(psd_sqrt(s2))(torch.from_numpy(s1)) == pytest.approx(
        np.sqrt(d1 * d2).sum(), rel=1e-6
    )
    exact = d1.sum() + d2.sum() - 2 * np.sqrt(d1 * d2).sum()
    zero = np.zeros(64)
    assert frechet_distance(zero, s1, zero, s2, "FID") == pytest.approx(exact, rel=1e-6)


def test_streamed_moments_equal_numpy_even_far_from_the_origin():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)) * 0.01 + 1e4  # |mean| / std = 1e6: a naive E[xx^T] fails
    mean, cov = streamed(x, batch=33)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-12)


def test_fid_of_a_set_with_itself_is_zero(two_sets):
    a, _ = two_sets
    stats = streamed(a)
    assert abs(frechet_distance(*stats, *stats, "FID")) < 1e-6


def test_fid_of_two_gaussians_is_the_closed_form():
    """Diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (a_i + b_i - 2 sqrt(a_i b_i))."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    closed = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    exact = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2), "FID")
    assert exact == pytest.approx(closed, rel=1e-9)
    # And from samples of those Gaussians (sampling error ~ 1/sqrt(N)).
    rng = np.random.default_rng(2)
    x = rng.normal(mu1, np.sqrt(var1), size=(200_000, 4))
    y = rng.normal(mu2, np.sqrt(var2), size=(200_000, 4))
    assert frechet_distance(*streamed(x, 10_000), *streamed(y, 10_000), "FID") == pytest.approx(
        closed, rel=0.02
    )


def test_fid_fails_loudly_instead_of_reporting_a_large_imaginary_residue():
    # A "covariance" with a negative eigenvalue: (S1 S2)^1/2 is genuinely complex.
    sigma1, sigma2 = np.diag([1.0, -4.0]), np.eye(2)
    with pytest.raises(BenchError, match=r"imaginary part.*use more images"):
        frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2, "FID (test)")


def test_fid_refuses_statistics_of_another_dimension_or_non_finite():
    with pytest.raises(BenchError, match=r"differ in dimension \(2 vs 3\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3), "FID")
    with pytest.raises(BenchError, match="NaN or infinite"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2), "FID")


def test_inception_score_of_uniform_predictions_is_one():
    for protocol in ("adm", "torch-fidelity"):
        mean, std = inception_score(np.zeros((100, 1008), np.float32), protocol, splits=10)
        assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_predictions_spread_over_k_classes_is_k():
    k = 5
    labels = np.tile(np.arange(k), 10)  # every consecutive 5 hold each class once
    logits = 50.0 * np.eye(k, dtype=np.float32)[labels]  # softmax ~ one-hot
    mean, std = inception_score(logits, "adm")
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """guided-diffusion's evaluator formula (compute_inception_score), re-written in numpy:
    softmax, then exp(mean KL) over consecutive chunks of split_size, last partial included."""
    z = logits.astype(np.float64)
    preds = np.exp(z - z.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


@pytest.mark.parametrize("n", [1000, 5000, 12_345])
def test_adm_inception_score_is_guided_diffusions_formula(n):
    logits = np.random.default_rng(n).normal(0, 3, (n, 50)).astype(np.float32)
    mean, std = inception_score(logits, "adm")
    assert mean == pytest.approx(adm_inception_score(logits), rel=1e-10)
    chunks = -(-n // 5000)
    assert (std == 0) == (chunks == 1)


@pytest.mark.parametrize(("n", "splits"), [(1000, 10), (1003, 7), (50, 2)])
def test_torch_fidelity_inception_score_is_torch_fidelitys(n, splits):
    from torch_fidelity.metric_isc import isc_features_to_metric  # imported here: seconds

    logits = np.random.default_rng(n).normal(0, 3, (n, 50)).astype(np.float32)
    want = isc_features_to_metric(torch.from_numpy(logits), splits=splits)
    mean, std = inception_score(logits, "torch-fidelity", splits)
    assert mean == pytest.approx(want["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(want["inception_score_std"], rel=1e-9)


def test_the_two_inception_score_protocols_agree_only_at_50000_unordered_samples():
    logits = np.random.default_rng(0).normal(0, 3, (1000, 20)).astype(np.float32)
    assert inception_score(logits, "adm")[0] != pytest.approx(
        inception_score(logits, "torch-fidelity", 10)[0], rel=1e-3
    )  # one chunk of 1,000 vs 10 splits of 100: p(y) is estimated from different counts


def test_adm_inception_score_chunks_are_consecutive():
    """Sorted by class, each chunk of 5,000 holds one class: IS 1 (guided-diffusion #165);
    torch-fidelity shuffles first and sees all 10 classes in every split."""
    labels = np.repeat(np.arange(10), 5000)
    logits = 50.0 * np.eye(10, dtype=np.float32)[labels]
    assert inception_score(logits, "adm")[0] == pytest.approx(1.0, rel=1e-9)
    assert inception_score(logits, "torch-fidelity", 10)[0] == pytest.approx(10.0, rel=1e-2)


def test_inception_score_needs_at_least_one_image_per_split():
    with pytest.raises(BenchError, match="10 parts, but there are only 5 images"):
        inception_score(np.zeros((5, 10), np.float32), "torch-fidelity", splits=10)
    with pytest.raises(BenchError, match="unknown Inception Score protocol 'tf'; valid: adm"):
        inception_score(np.zeros((5, 10), np.float32), "tf")


def test_is_splits_belongs_to_the_torch_fidelity_protocol():
    assert EvalConfig(is_protocol="torch-fidelity", is_splits=4).is_splits == 4
    with pytest.raises(ConfigError, match=r"is_splits: sets the splits of is_protocol = "):
        EvalConfig(is_splits=4)
    labels = protocols("torch-fidelity", 4)
    assert labels["is_mean"] == "torch-fidelity: 4 splits of the shuffled samples (seed 2020)"
    assert protocols()["is_mean"] == "ADM evaluator: consecutive chunks of 5,000 samples"
    assert "float32" in protocols()["precision"] == protocols()["recall"]


def brute_force_precision_recall(ref: np.ndarray, gen: np.ndarray, k: int = 3):
    """Kynkaanniemi et al. 2019 written out with full distance matrices (float64)."""

    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(points, manifold, r):
        d = ((points[:, None] - manifold[None]) ** 2).sum(-1)
        return (d <= r[None]).any(1)

    return inside(gen, ref, radii(ref)).mean(), inside(ref, gen, radii(gen)).mean()


def test_precision_recall_of_a_set_against_itself_is_one_and_one(two_sets):
    a, _ = two_sets
    assert precision_recall(a, a) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero_and_zero(two_sets):
    a, _ = two_sets
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)


def test_precision_recall_match_a_brute_force_knn(two_sets):
    a, b = two_sets
    precision, recall = precision_recall(a, b)
    expected = brute_force_precision_recall(a.astype(np.float64), b.astype(np.float64))
    assert 0 < precision < 1 and 0 < recall < 1
    assert (precision, recall) == pytest.approx(expected, abs=1.5 / len(a))


def test_manifold_needs_more_points_than_neighbours():
    with pytest.raises(BenchError, match=r"more than k = 3 images per set.*got 3"):
        manifold_radii(torch.zeros(3, 4))


def test_kid_is_cleanfids_kernel_distance_and_leaves_the_global_rng_alone(two_sets):
    a, b = two_sets
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    kid = kernel_inception_distance(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.random.seed(0)
    assert kid == pytest.approx(kernel_distance(a, b), rel=1e-12)
    assert kid > 0.1
    assert abs(kernel_inception_distance(a[:200], a[200:])) < 0.02  # same distribution


def test_kid_needs_two_images_per_set(two_sets):
    a, _ = two_sets
    with pytest.raises(BenchError, match="at least 2 images per set, got 1"):
        kernel_inception_distance(a[:1], a)
