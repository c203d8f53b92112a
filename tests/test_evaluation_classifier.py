"""The classifier evaluator: accuracy on held-out digits, determinism, its on-disk cache."""

import dataclasses
import math

import pytest
import torch

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import build_evaluator, score_label
from bench.evaluation import classifier as classifier_module
from bench.evaluation.classifier import ClassifierConfig, build_classifier
from casdm.config import DataConfig
from casdm.data import load_dataset, save_npz, to_uint8

DIGITS = DataConfig(dataset="digits", resolution=16)
TINY = ClassifierConfig(steps=3, batch_size=16)  # seconds-cheap, for cache behaviour only

U = 2.0**-24  # float32's unit round-off
# Products summed along the default SmallCNN's path to its hidden (pool) features, on 1-channel
# digits: the three 3x3 convolutions (9 x 1, 9 x 24, 9 x 48 terms), the 4x4 average pool at
# 16 px (1 term), the linear layer over 96 x 16 inputs: 2,194. The logits: 128 more.
POOL_TERMS = 9 * 1 + 9 * 24 + 9 * 48 + 1 + 96 * 16
LOGIT_TERMS = POOL_TERMS + 128


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifier_cache")


@pytest.fixture(scope="module")
def evaluator(cache):
    """The default classifier on 16x16 digits, trained once for this module."""
    return build_evaluator(EvalConfig(), DIGITS, device="cpu", cache_dir=cache)


def test_held_out_accuracy_on_digits_is_at_least_97_percent(evaluator):
    test = load_dataset(DIGITS, "test")
    logits = evaluator.features(to_uint8(test.images)).logits
    accuracy = (logits.argmax(1) == test.labels).float().mean().item()
    assert accuracy >= 0.97
    # What the cache recorded: the same float32 count / N, from logits of another pass (other
    # batches, another layout), which differ by the round-off of their sums, about U
    # sqrt(LOGIT_TERMS) of their RMS (within 5 of that). Only an argmax whose top two logits
    # are within twice that can flip, moving the accuracy by 1 / N (measured: no such sample,
    # the smallest gap 750 times that).
    roundoff = 5 * U * math.sqrt(LOGIT_TERMS) * logits.pow(2).mean().sqrt().item()
    top2 = logits.topk(2, dim=1).values
    near_ties = int((top2[:, 0] - top2[:, 1] <= 2 * roundoff).sum())
    assert accuracy == pytest.approx(evaluator.accuracy, rel=0, abs=near_ties / len(logits))


def test_classifier_yields_the_three_feature_kinds_and_names_itself(evaluator):
    images = to_uint8(load_dataset(DIGITS, "test").images[:5])
    pool, spatial, logits = evaluator.features(images)
    assert (pool.shape, spatial.shape, logits.shape) == ((5, 128), (5, 512), (5, 10))
    assert evaluator.dims == (128, 512, 10)
    assert evaluator.name == evaluator.label == "classifier:digits"
    assert score_label("fid", evaluator) == "FID (classifier:digits)"
    # Pool features are scaled to unit RMS on the training split (KID's kernel stays O(1)).
    train = to_uint8(load_dataset(DIGITS, "train").images)
    pool = evaluator.features(train).pool
    rms = pool.pow(2).mean().sqrt().item()
    # The scale was measured in another pass: the features differ by the round-off of their
    # sums (U sqrt(POOL_TERMS) of their RMS), each pass's float32 mean of squares by torch's
    # cascade summation's (about U log2(N D) each), the square root and division by 2 U; within
    # 5 of that (measured: exactly 1 here).
    rtol = 5 * U * (math.sqrt(POOL_TERMS) + 2 * math.log2(pool.numel()) + 2)
    assert rms == pytest.approx(1.0, rel=rtol, abs=0)


def test_features_depend_on_pixel_values_not_on_memory_layout(evaluator):
    images = to_uint8(load_dataset(DIGITS, "test").images[:64])  # [64, 1, 16, 16]
    stored = images.permute(0, 2, 3, 1).numpy().copy()  # NHWC, as in an ADM .npz
    nhwc = torch.from_numpy(stored).permute(0, 3, 1, 2)  # strides (256, 1, 16, 1)
    assert nhwc.stride() != images.stride() and torch.equal(nhwc, images)
    for ours, theirs in zip(evaluator.features(nhwc), evaluator.features(images), strict=True):
        assert torch.equal(ours, theirs)


def test_the_cached_classifier_is_reused_not_retrained(evaluator, cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("retrained although the cache holds this classifier")

    monkeypatch.setattr(classifier_module, "train_classifier", refuse)
    again = build_evaluator(EvalConfig(), DIGITS, device="cpu", cache_dir=cache)
    assert again.weights_hash == evaluator.weights_hash
    assert again.accuracy == evaluator.accuracy


def test_training_is_deterministic_and_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = build_classifier(EvalConfig(), DIGITS, device="cpu", cache_dir=tmp_path / "a", cfg=TINY)
    assert torch.equal(torch.get_rng_state(), state)
    second = build_classifier(
        EvalConfig(), DIGITS, device="cpu", cache_dir=tmp_path / "b", cfg=TINY
    )
    assert first.weights_hash == second.weights_hash
    other = dataclasses.replace(TINY, seed=1)
    third = build_classifier(
        EvalConfig(), DIGITS, device="cpu", cache_dir=tmp_path / "b", cfg=other
    )
    assert third.weights_hash != first.weights_hash  # the config is part of the cache key


def test_a_truncated_cache_file_is_detected_and_retrained(tmp_path):
    first = build_classifier(EvalConfig(), DIGITS, device="cpu", cache_dir=tmp_path, cfg=TINY)
    (path,) = (tmp_path / "classifier").glob("*.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(UserWarning, match=r"classifier cache .* is unusable.*retraining"):
        again = build_classifier(EvalConfig(), DIGITS, device="cpu", cache_dir=tmp_path, cfg=TINY)
    assert again.weights_hash == first.weights_hash


def test_wrong_channels_or_resolution_are_refused(evaluator):
    with pytest.raises(BenchError, match=r"3 channels.*takes 1 channel"):
        evaluator.features(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(BenchError, match="trained on 16x16 images, got 8x8"):
        evaluator.features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(BenchError, match="expected uint8 images in \\[0, 255\\], got dtype"):
        evaluator.features(torch.zeros(2, 1, 16, 16))


def test_a_dataset_without_labels_is_refused(tmp_path):
    npz = tmp_path / "unlabelled.npz"
    save_npz(npz, torch.zeros(20, 1, 8, 8, dtype=torch.uint8))
    data = DataConfig(dataset=f"npz:{npz}", resolution=8)
    with pytest.raises(BenchError, match="has none; use --evaluator inception"):
        build_evaluator(EvalConfig(), data, device="cpu", cache_dir=tmp_path)
