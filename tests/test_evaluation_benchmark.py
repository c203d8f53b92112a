"""The evaluator benchmark: ours against clean-fid on the same images, network and weights."""

import cleanfid.fid
import numpy as np
import pytest

from bench.evaluation.benchmark import evaluation_benchmark


def cheap_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """FID without its matrix square root: |mu1 - mu2|^2 + tr S1 + tr S2.

    A 2048-d `sqrtm` takes minutes on the shared 2-core test machine, and this benchmark
    needs three; the real Frechet distance is tested in test_evaluation_metrics. The agreement
    checked here (both sides saw the same features) survives the substitution.
    """
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2))


def test_benchmark_compares_with_cleanfid_on_the_same_images_and_weights(monkeypatch):
    monkeypatch.setattr(cleanfid.fid, "frechet_distance", cheap_frechet)  # ours calls it too
    result = evaluation_benchmark(10, 16, random_weights=True, batch_size=5)
    assert result["evaluator"] == "Inception/legacy_tensorflow (random weights)"
    assert result["protocol"] == "legacy_tensorflow"
    assert result["n_images"] == 10 and result["device"] == "cpu"
    assert result["images_per_s"] > 0 and result["cleanfid_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["images_per_s"] / result["cleanfid_images_per_s"]
    )
    # Same network, same weights, same inputs and feature call: the same numbers.
    assert result["metrics"]["fid"] == pytest.approx(result["cleanfid_metrics"]["fid"], rel=1e-4)
    assert result["metrics"]["kid"] == pytest.approx(result["cleanfid_metrics"]["kid"], abs=1e-4)
    assert result["peak_rss_mb"] > 0 and result["peak_cuda_mb"] is None


def test_benchmark_needs_whole_batches():
    with pytest.raises(ValueError, match="multiple of batch_size"):
        evaluation_benchmark(12, 16, random_weights=True, batch_size=5)
