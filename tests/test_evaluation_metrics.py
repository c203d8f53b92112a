"""FID/sFID, IS, KID and precision/recall against closed forms and independent implementations."""

import math

import numpy as np
import pytest
import scipy.sparse.linalg
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

# Tolerances, derived from the arithmetic. U is float32's unit round-off, EPS float64's machine
# epsilon. Rounding errors are modelled as independent (Higham & Mary 2019): a sum of K terms
# carries about sqrt(K) roundings of its size, and the largest of many such errors stays within
# 5 times that.
U = 2.0**-24
EPS = float(np.finfo(np.float64).eps)


def norm(s: np.ndarray) -> float:
    """|S| (2-norm) of a covariance: its largest eigenvalue (Lanczos; a 2-d SVD is seconds)."""
    return float(scipy.sparse.linalg.eigsh(s, k=1, which="LA", return_eigenvectors=False)[0])


def trace_root_error(s1, s2, *, samples=0, kappa=1.0, eigenvalues=None) -> float:
    """A bound on one implementation's float64 error of Tr (S1 S2)^1/2 (an eigensolver's).

    The eigenvalues lambda of S1 S2 (those of the symmetric L^T S1 L, S2 = L L^T; to a solver of
    the nonsymmetric S1 S2, scipy's sqrtm, seen through a similarity of condition
    kappa = cond(S2)^1/2) move by <= delta = kappa (2 sqrt(D) + 2 sqrt(samples) + 1) EPS
    |S1| |S2| (2-norms): two products of D-term sums, the covariances' own sums over `samples`
    rows where the implementation computes them, and the solver's backward error (LAPACK's
    approximate bound, EPS |A|). A root moves by <= min(sqrt(delta), delta / sqrt(lambda)), so
    a zero eigenvalue (a singular covariance) by up to sqrt(delta).
    """
    if eigenvalues is None:
        cholesky = np.linalg.cholesky(s2)
        eigenvalues = np.linalg.eigvalsh(cholesky.T @ s1 @ cholesky)
    lam = np.clip(eigenvalues, 0, None)
    growth = 2 * math.sqrt(len(s1)) + 2 * math.sqrt(samples) + 1
    delta = kappa * growth * EPS * norm(s1) * norm(s2)
    with np.errstate(divide="ignore"):
        return float(np.minimum(math.sqrt(delta), delta / np.sqrt(lam)).sum())


def fid_error(mu1, s1, mu2, s2, *, samples=0, kappa=1.0, eigenvalues=None) -> float:
    """A bound on one implementation's float64 error of the Frechet distance: twice its trace
    term's (`trace_root_error`), and the rest (|mu1 - mu2|^2, the traces: sums over D entries
    and, where the implementation computes the statistics, `samples` rows) within
    (sqrt(D) + sqrt(samples) + 2) EPS of their size |mu1|^2 + |mu2|^2 + Tr S1 + Tr S2."""
    root = trace_root_error(s1, s2, samples=samples, kappa=kappa, eigenvalues=eigenvalues)
    size = mu1 @ mu1 + mu2 @ mu2 + np.trace(s1) + np.trace(s2)
    return 2 * root + (math.sqrt(len(s1)) + math.sqrt(samples) + 2) * EPS * size


def float32_mean_error(features: np.ndarray) -> np.ndarray:
    """[D]: the size of the error of np.mean over the rows of float32 `features` (clean-fid's
    mean), which adds the rows one by one: each addition rounds its partial sum s_k by <= U
    |s_k|, independently, so the sum is off by about U sqrt(sum s_k^2); then the division."""
    partial = np.cumsum(features, axis=0, dtype=np.float64)
    mean = features.mean(0, dtype=np.float64)
    return U * (np.sqrt((partial**2).sum(0)) / len(features) + np.abs(mean))


def cond_root(s2: np.ndarray) -> float:
    """kappa = cond(S2)^1/2: S1 S2 = S2^-1/2 (S2^1/2 S1 S2^1/2) S2^1/2."""
    eigenvalues = np.linalg.eigvalsh(s2)
    return math.sqrt(eigenvalues[-1] / eigenvalues[0])


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
    (mu1, s1), (mu2, s2) = streamed(a), streamed(b, batch=50)
    fid = frechet_distance(mu1, s1, mu2, s2, "FID")
    assert fid > 1  # the sets differ: a vacuous 0 would pass the comparisons below too
    # Both float64 from the same float32 features (fid_error for each; scipy's sqrtm sees the
    # eigenvalues through kappa), except clean-fid's float32 mean: |mu1 - mu2|^2 moves by
    # 2 <d, delta> + |delta|^2, <d, delta> a sum of D independent errors, within 5 of its size.
    # Measured: 1/14 (clean-fid) and 1/300 (Heusel's formula) of these.
    ours = fid_error(mu1, s1, mu2, s2, samples=len(a))
    delta = float32_mean_error(a) + float32_mean_error(b)
    mean_error = 10 * np.sqrt((((mu1 - mu2) * delta) ** 2).sum()) + delta @ delta
    scipy = fid_error(mu1, s1, mu2, s2, samples=len(a), kappa=cond_root(s2))
    assert fid == pytest.approx(fid_from_feats(a, b), rel=0, abs=ours + scipy + mean_error)
    heusel = heusel_fid(a.astype(np.float64), b.astype(np.float64))  # eigh: kappa 1 too
    assert fid == pytest.approx(heusel, rel=0, abs=2 * ours)


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
    """The eigh trace term against clean-fid's scipy sqrtm, to their float64 round-off
    (`fid_error`: relative 4e-11 at full rank, 3e-6 with a singular S1, whose 213 zero
    eigenvalues each move the root by up to sqrt(delta); measured: 0 and 5e-9)."""
    rng = np.random.default_rng(dim + n1)
    a, b = _inception_like(rng, n1, dim, 0.2), _inception_like(rng, 3 * dim // 2, dim, 0.0)
    mu1, s1 = a.mean(0, dtype=np.float64), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0, dtype=np.float64), np.cov(b, rowvar=False)
    expected = cleanfid_frechet_distance(mu1, s1, mu2, s2)
    root = psd_sqrt(s2)
    # eigh's backward error (EPS |S2|, LAPACK's approximate bound), then the two products of
    # D-term sums (V sqrt(L) V^T, R R: sqrt(D) EPS |S2| each). Measured: 1/13 to 1/10 of it.
    root_error = (2 * math.sqrt(dim) + 1) * EPS * norm(s2)
    np.testing.assert_allclose(root @ root, s2, rtol=0, atol=root_error)
    fid = frechet_distance(mu1, s1, mu2, s2, "FID", root2=root)  # the reference's cached root
    # The statistics are given to both: no sums over samples. Ours: eigh of the symmetric
    # R S1 R; clean-fid's: sqrtm of S1 S2, through kappa.
    eigenvalues = np.linalg.eigvalsh(root @ s1 @ root)
    tolerance = fid_error(mu1, s1, mu2, s2, eigenvalues=eigenvalues) + fid_error(
        mu1, s1, mu2, s2, kappa=cond_root(s2), eigenvalues=eigenvalues
    )
    assert fid == pytest.approx(expected, rel=0, abs=tolerance)
    if dim < 2048:  # without it (the root computed inside: two more 2048-d eigh, 4-9 s)
        fid = frechet_distance(mu1, s1, mu2, s2, "FID")
        assert fid == pytest.approx(expected, rel=0, abs=tolerance)


def test_the_trace_term_is_right_for_singular_covariances():
    """Rank-deficient S1 and S2 (clean-fid would offset them by 1e-6 I if sqrtm failed): the
    eigendecomposition needs no offset, its Tr (S1 S2)^1/2 against the closed form for commuting
    S1, S2. Zero eigenvalues come out as +-1e-16 or so, each adding up to its square root: the
    54 zeros of S1 S2 here, up to sqrt(delta) = 1.2e-7 each (`trace_root_error`, with the exact
    eigenvalues d1 d2; measured: 1/17 of it)."""
    rng = np.random.default_rng(3)
    basis, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    d1 = np.where(np.arange(64) < 20, rng.uniform(0.5, 2, 64), 0.0)  # rank 20
    d2 = np.where(np.arange(64) >= 10, rng.uniform(0.5, 2, 64), 0.0)  # rank 54
    s1, s2 = (basis * d1) @ basis.T, (basis * d2) @ basis.T
    error = trace_root_error(s1, s2, eigenvalues=d1 * d2)
    assert TraceSqrt(psd_sqrt(s2))(torch.from_numpy(s1)) == pytest.approx(
        np.sqrt(d1 * d2).sum(), rel=0, abs=error
    )
    exact = d1.sum() + d2.sum() - 2 * np.sqrt(d1 * d2).sum()
    zero = np.zeros(64)
    tolerance = fid_error(zero, s1, zero, s2, eigenvalues=d1 * d2)
    assert frechet_distance(zero, s1, zero, s2, "FID") == pytest.approx(exact, rel=0, abs=tolerance)


def test_streamed_moments_equal_numpy_even_far_from_the_origin():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)) * 0.01 + 1e4  # |mean| / std = 1e6: a naive E[xx^T] fails
    mean, cov = streamed(x, batch=33)
    # The mean: ours shifts by the first batch's mean (33 values summed), numpy sums all 500
    # (sqrt(n) EPS of |mean| each, plus the last operations). Measured: 1/5 of it.
    np.testing.assert_allclose(mean, x.mean(0), rtol=(math.sqrt(500) + math.sqrt(33) + 2) * EPS)
    # The covariance: x - shift and x - mean are exact (Sterbenz: |x - shift| << |x|), the
    # 500 products d d^T and their sum round at the products' size (max |d|^2) on each side:
    # 2 sqrt(n) EPS max |d|^2 = 1.4e-17 (measured: 1/130 of it). A naive E[xx^T] - mu mu^T
    # would be off by EPS |x|^2 = 2e-8.
    deviation = np.abs(x - x.mean(0)).max()
    cov_error = 2 * math.sqrt(500) * EPS * deviation**2
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=0, atol=cov_error)


def test_fid_of_a_set_with_itself_is_zero(two_sets):
    a, _ = two_sets
    stats = streamed(a)
    # Its float64 round-off (fid_error, 1.7e-13; measured 1/24 of it).
    assert abs(frechet_distance(*stats, *stats, "FID")) <= fid_error(*stats, *stats)


def test_fid_of_two_gaussians_is_the_closed_form():
    """Diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (a_i + b_i - 2 sqrt(a_i b_i))."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    closed = ((mu1 - mu2) ** 2).sum() + (var1 + var2 - 2 * np.sqrt(var1 * var2)).sum()
    s1, s2 = np.diag(var1), np.diag(var2)
    exact = frechet_distance(mu1, s1, mu2, s2, "FID")
    # Ours to its float64 round-off; the closed form sums 8 terms (sqrt(8) EPS of its size).
    size = ((mu1 - mu2) ** 2).sum() + (var1 + var2 + 2 * np.sqrt(var1 * var2)).sum()
    tolerance = fid_error(mu1, s1, mu2, s2) + math.sqrt(8) * EPS * size
    assert exact == pytest.approx(closed, rel=0, abs=tolerance)
    # And from N samples of those Gaussians: sampling error. To first order FID moves by
    # sum 2 (mu1 - mu2) dmu + (1 - sqrt(b / a)) dS1 + (1 - sqrt(a / b)) dS2 over the diagonal
    # (a, b the variances; the off-diagonal entries enter at second order), with var(dmu) =
    # (a + b) / N and var(dS) = 2 a^2 / N: a standard deviation sd of
    # sqrt(sum 4 (mu1 - mu2)^2 (a + b) + 2 (sqrt(a) - sqrt(b))^2 (a + b)) / sqrt(N) = 0.027;
    # within 5 sd, plus the second-order terms (D^2 entries, each O(max variance / N)): 1.3%
    # relative. Measured: 0.4 sd.
    n = 200_000
    rng = np.random.default_rng(2)
    x = rng.normal(mu1, np.sqrt(var1), size=(n, 4))
    y = rng.normal(mu2, np.sqrt(var2), size=(n, 4))
    spread = 4 * (mu1 - mu2) ** 2 + 2 * (np.sqrt(var1) - np.sqrt(var2)) ** 2
    sd = math.sqrt((spread * (var1 + var2)).sum() / n)
    bias = 4**2 * max(var1.max(), var2.max()) / n
    sampled = frechet_distance(*streamed(x, 10_000), *streamed(y, 10_000), "FID")
    assert sampled == pytest.approx(closed, rel=0, abs=5 * sd + bias)


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
    # Equal rows: p(y) is a mean of n equal numbers (within (sqrt(n) + 1) EPS of them), so
    # every log-ratio, KL (a p-weighted mean of them) and IS - 1 = exp(KL) - 1 are within
    # (sqrt(n) + 3) EPS of 0; the std of the parts' scores too. (Measured: exactly 1 and 0.)
    tolerance = (math.sqrt(100) + 3) * EPS
    for protocol in ("adm", "torch-fidelity"):
        mean, std = inception_score(np.zeros((100, 1008), np.float32), protocol, splits=10)
        assert mean == pytest.approx(1.0, rel=0, abs=tolerance)
        assert std == pytest.approx(0.0, rel=0, abs=tolerance)


def test_inception_score_of_confident_predictions_spread_over_k_classes_is_k():
    k = 5
    labels = np.tile(np.arange(k), 10)  # every consecutive 5 hold each class once
    logits = 50.0 * np.eye(k, dtype=np.float32)[labels]  # softmax ~ one-hot
    mean, std = inception_score(logits, "adm")
    # Exactly, IS = k (1 - 4e-20): the off-class probabilities are exp(-50). p(y) = 1 / k is a
    # mean of 50 numbers ((sqrt(50) + 1) EPS), log p(y|x) and the KL sum add a few EPS of
    # log k: IS = exp(KL) within (sqrt(50) + 4) EPS log k relative. One chunk: std exactly 0.
    assert mean == pytest.approx(k, rel=(math.sqrt(50) + 4) * EPS * math.log(k), abs=0)
    assert std == 0


def is_rtol(logits: np.ndarray, part: int) -> float:
    """The relative float64 difference of two implementations of IS = exp(KL), both float64:
    IS's relative error is KL's absolute error. Per sample, KL = sum_k p (log p - log p(y)):
    each log carries a few EPS of its size (log_softmax vs log of exp / sum, log of a mean of
    `part` numbers: sqrt(part) EPS), the K-term sum sqrt(K) EPS of sum_k p |log p - log p(y)|;
    the mean over the part sqrt(part) EPS of KL. Twice that for two implementations."""
    z = torch.from_numpy(logits.astype(np.float64))
    log_p = z.log_softmax(1)
    log_py = log_p.exp().mean(0).log()
    size = (log_p.exp() * (log_p.abs() + log_py.abs())).sum(1).max().item()
    kl = (log_p.exp() * (log_p - log_py)).sum(1).mean().item()
    k = logits.shape[1]
    return 2 * EPS * ((math.sqrt(k) + math.sqrt(part) + 4) * size + math.sqrt(part) * kl)


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
    assert mean == pytest.approx(adm_inception_score(logits), rel=is_rtol(logits, 5000), abs=0)
    chunks = -(-n // 5000)
    assert (std == 0) == (chunks == 1)


@pytest.mark.parametrize(("n", "splits"), [(1000, 10), (1003, 7), (50, 2)])
def test_torch_fidelity_inception_score_is_torch_fidelitys(n, splits):
    from torch_fidelity.metric_isc import isc_features_to_metric  # imported here: seconds

    logits = np.random.default_rng(n).normal(0, 3, (n, 50)).astype(np.float32)
    want = isc_features_to_metric(torch.from_numpy(logits), splits=splits)
    mean, std = inception_score(logits, "torch-fidelity", splits)
    # Each part's score within is_rtol (from the whole set's sizes); the std of the parts'
    # scores then moves by at most their largest absolute error (mean times that).
    rtol = is_rtol(logits, n // splits)
    assert mean == pytest.approx(want["inception_score_mean"], rel=rtol, abs=0)
    assert std == pytest.approx(want["inception_score_std"], rel=0, abs=2 * mean * rtol)


def test_the_two_inception_score_protocols_agree_only_at_50000_unordered_samples():
    logits = np.random.default_rng(0).normal(0, 3, (1000, 20)).astype(np.float32)
    # One chunk of 1,000 vs 10 splits of 100: p(y) is estimated from different counts, a
    # statistical difference (measured: 3%), far above round-off (is_rtol: 1e-14).
    assert inception_score(logits, "adm")[0] != pytest.approx(
        inception_score(logits, "torch-fidelity", 10)[0], rel=1e-3
    )


def test_adm_inception_score_chunks_are_consecutive():
    """Sorted by class, each chunk of 5,000 holds one class: IS 1 (guided-diffusion #165);
    torch-fidelity shuffles first and sees all 10 classes in every split."""
    labels = np.repeat(np.arange(10), 5000)
    logits = 50.0 * np.eye(10, dtype=np.float32)[labels]
    # Equal rows in every chunk: as for uniform predictions, within (sqrt(n) + 3) EPS of 1.
    assert inception_score(logits, "adm")[0] == pytest.approx(
        1.0, rel=0, abs=(math.sqrt(5000) + 3) * EPS
    )
    # Shuffled, each split of n = 5,000 one-hot rows scores exp(H(counts / n)); a multinomial
    # sample of K = 10 classes has E[log K - H] = (K - 1) / 2n and a standard deviation of
    # sqrt(2 (K - 1)) / 2n, over the mean of 10 splits; within 5 of those (measured: 1.1e-3).
    k, n = 10, 5000
    rtol = (k - 1) / (2 * n) + 5 * math.sqrt(2 * (k - 1)) / (2 * n) / math.sqrt(10)
    assert inception_score(logits, "torch-fidelity", 10)[0] == pytest.approx(10.0, rel=rtol)


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
    # Ours in float32, the brute force in float64: a point whose distance is within round-off
    # of a radius may fall on the other side, moving precision by 1 / len(b) or recall by
    # 1 / len(a); one such point is allowed (1.5 / len(a) > 1 / len(b)). Measured: none.
    assert (precision, recall) == pytest.approx(expected, rel=0, abs=1.5 / len(a))


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
    # clean-fid's own kernel_distance on the same subsets (KID_SEED = 0): the same operations
    # on the same numbers, so the same float.
    assert kid == kernel_distance(a, b)
    assert kid > 0.1
    assert abs(kernel_inception_distance(a[:200], a[200:])) < 0.02  # same distribution


def test_kid_needs_two_images_per_set(two_sets):
    a, _ = two_sets
    with pytest.raises(BenchError, match="at least 2 images per set, got 1"):
        kernel_inception_distance(a[:1], a)
