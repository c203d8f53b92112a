"""The classifier evaluator: accuracy on held-out digits, determinism, its on-disk cache."""

import dataclasses

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
    assert accuracy == pytest.approx(evaluator.accuracy, abs=1e-6)  # what the cache recorded


def test_classifier_yields_the_three_feature_kinds_and_names_itself(evaluator):
    images = to_uint8(load_dataset(DIGITS, "test").images[:5])
    pool, spatial, logits = evaluator.features(images)
    assert (pool.shape, spatial.shape, logits.shape) == ((5, 128), (5, 512), (5, 10))
    assert evaluator.dims == (128, 512, 10)
    assert evaluator.name == evaluator.label == "classifier:digits"
    assert score_label("fid", evaluator) == "FID (classifier:digits)"
    # Pool features are scaled to unit RMS on the training split (KID's kernel stays O(1)).
    train = to_uint8(load_dataset(DIGITS, "train").images)
    rms = evaluator.features(train).pool.pow(2).mean().sqrt().item()
    assert rms == pytest.approx(1.0, rel=1e-4)


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
