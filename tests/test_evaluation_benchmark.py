"""The evaluator benchmark: ours against clean-fid on the same images, network and weights."""

import math

import cleanfid.fid
import numpy as np
import pytest

import bench.evaluation.compute
import bench.evaluation.reference
from bench.evaluation.benchmark import evaluation_benchmark


def cheap_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """FID without its matrix square root: |mu1 - mu2|^2 + tr S1 + tr S2 + sum S1 * S2.

    A 2048-d `sqrtm` takes minutes on the shared 2-core test machine, and so do the 2048-d
    eigendecompositions of ours; both Frechet distances are tested against each other in
    test_evaluation_metrics. The agreement checked here (both sides saw the same features,
    hence the same statistics) survives the substitution, made on both sides.
    """
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) + (sigma1 * sigma2).sum()
    )


U, EPS = 2.0**-24, float(np.finfo(np.float64).eps)
N_IMAGES, D = 6, 2048
# The benchmark's parity, derived for its random-weights Inception on 6 random 16x16 images
# (test_evaluation_inception's round-off model). Ours runs channels-last, clean-fid NCHW: each
# feature moves by independent round-off of the network's sums, a standard deviation of
# U sqrt(48,971) of the features' RMS (48,971 products along the path to pool3).
FEATURE_ROUNDOFF = U * math.sqrt(48_971)
# cheap_frechet's terms are quadratic in the features (sum S1 * S2 quartic, 4 at most), of
# centred features whose norm is 1/23 of the features' own here (measured: 16x16 random images
# look alike to the network); a change of the features by independent errors of standard
# deviation s moves a term relatively by 4 s / |centred| = 4 s q / (sqrt(n D) RMS), q = 23;
# within 5 of that: 5.5e-5. (clean-fid's float32 mean moves it 100 times less: 3e-8 with
# channels-last off.) Measured: 5e-7.
FID_RTOL = 5 * 4 * FEATURE_ROUNDOFF * 23 / math.sqrt(N_IMAGES * D)
# KID: the two draw different subsets (clean-fid's of the global RNG), at m = 6 permutations of
# the same features, so the kernel sums differ in order: each of the three sums of m^2 = 36
# kernel values <= k = (max x.y / D + 1)^3 <= 1.05^3 (measured x.y / D <= 0.045) is off by
# <= U log2(36) 36 (2 k) (pairwise summation), over m (m - 1) or m^2 / 2. The features'
# round-off moves x.y by ~ s RMS |y| = s RMS^2 sqrt(D) (RMS 0.2, measured), so a kernel by
# 3 (x.y / D + 1)^2 s RMS^2 / sqrt(D); KID weighs 4 kernels' worth; within 5 of that. In all
# 3e-6. Measured: 2.5e-8.
K_MAX, RMS = 1.05**3, 0.2
KID_SUMS = U * math.log2(36) * 36 * 2 * K_MAX * (1 / (6 * 5) + 2 / 36)
KID_FEATURES = 5 * 4 * 3 * K_MAX ** (2 / 3) * RMS**2 * FEATURE_ROUNDOFF / math.sqrt(D)
KID_ATOL = KID_SUMS + KID_FEATURES


def ours_cheap(mu1, sigma1, mu2, sigma2, what, *, root2, device):
    return cheap_frechet(mu1, sigma1, mu2, sigma2)


@pytest.fixture
def cheap(monkeypatch):
    monkeypatch.setattr(cleanfid.fid, "frechet_distance", cheap_frechet)
    monkeypatch.setattr(bench.evaluation.compute, "frechet_distance", ours_cheap)
    monkeypatch.setattr(bench.evaluation.reference, "psd_sqrt", lambda s, device: np.eye(len(s)))


def test_benchmark_compares_with_cleanfid_on_the_same_images_and_weights(cheap):
    result = evaluation_benchmark(6, 16, random_weights=True, batch_size=3, repeats=2)
    assert result["evaluator"] == "Inception/legacy_tensorflow (random weights)"
    assert result["protocol"] == "legacy_tensorflow"
    assert result["n_images"] == 6 and result["device"] == "cpu"
    assert result["prep_workers"] == 0  # automatic: on a CPU the network needs the cores
    assert result["images_per_s"] > 0 and result["cleanfid_images_per_s"] > 0
    # (n / ours) / (n / theirs) against theirs / ours: 4 roundings of EPS / 2.
    assert result["ratio"] == pytest.approx(
        result["images_per_s"] / result["cleanfid_images_per_s"], rel=2 * EPS, abs=0
    )
    # clean-fid's workflow makes two passes (compute_fid, compute_kid); one of them is cheaper.
    assert result["cleanfid_one_pass_seconds"] < result["cleanfid_seconds"]
    assert result["ratio_one_pass"] < result["ratio"] and result["repeats"] == 2
    # Same network, same weights, same inputs and feature call: the same numbers, up to the
    # round-off of the two layouts (FID_RTOL, KID_ATOL).
    fid, their_fid = result["scores"]["fid"], result["cleanfid_scores"]["fid"]
    assert fid == pytest.approx(their_fid, rel=FID_RTOL, abs=0)
    assert result["fid_relative_difference"] <= FID_RTOL
    kid, their_kid = result["scores"]["kid"], result["cleanfid_scores"]["kid"]
    assert kid == pytest.approx(their_kid, rel=0, abs=KID_ATOL)
    assert result["peak_rss_mb"] > 0 and result["peak_cuda_mb"] is None


def test_benchmark_needs_whole_batches():
    with pytest.raises(ValueError, match="multiple of batch_size"):
        evaluation_benchmark(12, 16, random_weights=True, batch_size=5)
