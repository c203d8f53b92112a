"""The evaluator benchmark: ours against clean-fid on the same images, network and weights."""

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
    assert result["ratio"] == pytest.approx(
        result["images_per_s"] / result["cleanfid_images_per_s"]
    )
    # clean-fid's workflow makes two passes (compute_fid, compute_kid); one of them is cheaper.
    assert result["cleanfid_one_pass_seconds"] < result["cleanfid_seconds"]
    assert result["ratio_one_pass"] < result["ratio"] and result["repeats"] == 2
    # Same network, same weights, same inputs and feature call: the same numbers.
    assert result["scores"]["fid"] == pytest.approx(result["cleanfid_scores"]["fid"], rel=1e-4)
    assert result["fid_relative_difference"] < 1e-4
    assert result["scores"]["kid"] == pytest.approx(result["cleanfid_scores"]["kid"], abs=1e-4)
    assert result["peak_rss_mb"] > 0 and result["peak_cuda_mb"] is None


def test_benchmark_needs_whole_batches():
    with pytest.raises(ValueError, match="multiple of batch_size"):
        evaluation_benchmark(12, 16, random_weights=True, batch_size=5)
