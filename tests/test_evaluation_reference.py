"""Reference statistics (cache, ADM batches) and `score`, with a cheap stand-in evaluator.

`ProjectionEvaluator` maps pixels through fixed random matrices: deterministic, instant, and
enough to check caching, streaming and every metric's plumbing on the real digits data.
"""

import json

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance, kernel_distance
from torch import nn

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import reference_statistics, score
from bench.evaluation.evaluator import Evaluator, Features
from bench.evaluation.formulas import KID_SEED, manifold_radii, precision_recall, psd_sqrt
from bench.evaluation.reference import SUBSET_SEED
from casdm.config import DataConfig
from casdm.data import from_uint8, load_dataset, to_uint8

DATA = DataConfig(dataset="digits", resolution=8)
KEYS = ["fid", "sfid", "is_mean", "is_std", "kid", "precision", "recall"]


class ProjectionEvaluator(Evaluator):
    """pool, spatial, logits = fixed random projections of the [-1, 1] pixels."""

    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        net = nn.Module()
        for name, dim in (("pool", 12), ("spatial", 10), ("logits", 5)):
            net.register_buffer(name, torch.randn(64, dim, generator=generator) / 8)
        super().__init__(
            net,
            name="projection",
            title="projection",
            weights_hash=f"projection-{seed}",
            protocol="projection",
            dims=(12, 10, 5),
            channels=(1,),
            device=torch.device("cpu"),
        )
        self.calls = 0
        self.images = 0

    def _features(self, images: torch.Tensor) -> Features:
        self.calls += 1
        self.images += len(images)
        x = from_uint8(images).flatten(1)  # [B, 64]
        net = self.network
        return Features(x @ net.pool, x @ net.spatial, 4 * x @ net.logits)


@pytest.fixture
def evaluator():
    return ProjectionEvaluator()


@pytest.fixture(scope="module")
def train():
    return to_uint8(load_dataset(DATA, "train").images)  # [1437, 1, 8, 8]


@pytest.fixture(scope="module")
def test_images():
    return to_uint8(load_dataset(DATA, "test").images)  # [360, 1, 8, 8]


def features_of(evaluator, images):
    return [f.double().numpy() for f in evaluator.features(images)]


def test_reference_statistics_are_computed_once_then_read_from_the_cache(
    evaluator, train, tmp_path
):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    assert evaluator.images == len(train)  # one pass over the whole train split
    pool, spatial, _ = features_of(ProjectionEvaluator(), train)
    np.testing.assert_allclose(reference.mu, pool.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reference.sigma, np.cov(pool, rowvar=False), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        reference.sigma_s, np.cov(spatial, rowvar=False), rtol=1e-6, atol=1e-8
    )
    assert reference.features.shape == (len(train), 12)
    radii = manifold_radii(torch.from_numpy(reference.features)).numpy()
    np.testing.assert_array_equal(reference.radii, radii)  # precision/recall's reference half
    (path,) = (tmp_path / "reference").glob("*.npz")
    with np.load(path) as npz:
        assert {"mu", "sigma", "mu_s", "sigma_s", "features", "radii", "meta"} <= set(npz.files)
        meta = json.loads(str(npz["meta"]))
        # FID's and sFID's trace term needs each covariance's square root: cached alongside.
        np.testing.assert_array_equal(npz["sigma_root"], psd_sqrt(reference.sigma))
        np.testing.assert_array_equal(npz["sigma_s_root"], psd_sqrt(reference.sigma_s))
    assert meta["dataset"] == "digits" and meta["split"] == "train" and meta["images"] == 1437
    assert meta["evaluator"] == "projection" and meta["weights_hash"] == "projection-0"

    again = ProjectionEvaluator()
    cached = reference_statistics(again, DATA, EvalConfig(), cache_dir=tmp_path)
    assert again.calls == 0
    np.testing.assert_array_equal(cached.sigma, reference.sigma)


def test_a_cache_file_without_the_roots_stays_valid_and_gains_them(evaluator, tmp_path):
    """Cache files written before the square roots were cached are used, not rebuilt."""
    first = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    (path,) = (tmp_path / "reference").glob("*.npz")
    with np.load(path) as npz:
        old = {k: npz[k] for k in npz.files if not k.endswith("_root")}
    np.savez(path, **old)
    again = ProjectionEvaluator()
    cached = reference_statistics(again, DATA, EvalConfig(), cache_dir=tmp_path)
    assert again.calls == 0  # no new feature pass
    assert cached.sha256() == first.sha256()
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["sigma_root"], psd_sqrt(first.sigma))
        np.testing.assert_array_equal(npz["sigma_s_root"], psd_sqrt(first.sigma_s))
        np.testing.assert_array_equal(npz["features"], old["features"])


def pool_in_batches(images, batch_size=100):
    """The projection's pool features of `images` in their order, batch by batch as the
    reference pass computes them (so bit for bit, whatever the matmul's blocking)."""
    net = ProjectionEvaluator()
    return np.concatenate(
        [
            net.features(images[i : i + batch_size]).pool.numpy()
            for i in range(0, len(images), batch_size)
        ]
    )


def test_the_kept_reference_features_are_the_images_in_file_order(evaluator, train, tmp_path):
    """KID draws its subsets by row index, as clean-fid's kernel_distance does from the
    features of a folder in file order: the kept features must be in that order."""
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    np.testing.assert_array_equal(reference.features, pool_in_batches(train))


def test_kid_above_1000_images_is_cleanfids_kernel_distance_in_file_order(
    evaluator, train, test_images, tmp_path
):
    """1,437 reference and 1,080 sample images: each of KID's 100 subsets takes 1,000 rows of
    both sets by index; the result is clean-fid's on the features in file order, exactly."""
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    samples = torch.cat([test_images.flip(-1), test_images.flip(-2), test_images])  # 1,080
    kid = score(samples, evaluator, reference, batch_size=100)["kid"]
    np.random.seed(KID_SEED)
    expected = kernel_distance(pool_in_batches(samples), pool_in_batches(train))
    assert kid == expected


def test_reference_images_cap_a_seeded_subset_in_file_order(evaluator, train, tmp_path):
    capped = reference_statistics(
        evaluator, DATA, EvalConfig(reference_images=100), cache_dir=tmp_path
    )
    assert evaluator.images == 100 and capped.meta["images"] == 100
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(SUBSET_SEED))
    np.testing.assert_array_equal(
        capped.features, pool_in_batches(train[chosen[:100].sort().values])
    )
    full = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    assert full.meta["images"] == 1437
    assert len(list((tmp_path / "reference").glob("*.npz"))) == 2
    assert not np.allclose(capped.mu, full.mu)


def test_a_cache_file_serves_either_network_layout(evaluator, tmp_path):
    """eval.channels_last moves the statistics in round-off only, as the device does: like the
    device it is not in the cache key, so that a study's workers, which share one evaluator
    build (bench.worker), may differ in it."""
    first = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    nchw = ProjectionEvaluator()
    nchw.channels_last = False
    cached = reference_statistics(nchw, DATA, EvalConfig(channels_last=False), cache_dir=tmp_path)
    assert nchw.calls == 0 and cached.sha256() == first.sha256()


def test_a_truncated_cache_file_is_detected_and_rebuilt(evaluator, tmp_path):
    first = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    (path,) = (tmp_path / "reference").glob("*.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"reference cache .* is unusable.*rebuilding"):
        rebuilt = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.sigma, first.sigma)
    with np.load(path) as npz:  # and the file was rewritten whole
        assert npz["sigma"].shape == (12, 12)


def test_a_cache_file_made_for_other_settings_is_not_used(evaluator, tmp_path):
    reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    (path,) = (tmp_path / "reference").glob("*.npz")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"]))
    meta["weights_hash"] = "something else"
    arrays["meta"] = np.array(json.dumps(meta))
    arrays["mu"] = arrays["mu"] + 1
    np.savez(path, **arrays)
    with pytest.warns(UserWarning, match="computed for other settings"):
        rebuilt = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    assert not np.allclose(rebuilt.mu, arrays["mu"])


def test_score_gives_every_metric_from_one_pass_over_the_images(evaluator, test_images, tmp_path):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    evaluator.calls = evaluator.images = 0
    metrics = score(test_images, evaluator, reference, batch_size=100)
    assert list(metrics) == KEYS
    assert evaluator.images == len(test_images) and evaluator.calls == 4  # 360 in batches of 100
    assert all(np.isfinite(v) for v in metrics.values())
    assert 0 < metrics["precision"] <= 1 and 0 < metrics["recall"] <= 1
    pool, _, _ = features_of(ProjectionEvaluator(), test_images)

    fid = frechet_distance(pool.mean(0), np.cov(pool, rowvar=False), reference.mu, reference.sigma)
    assert metrics["fid"] == pytest.approx(fid, rel=1e-6)
    pr = precision_recall(reference.features, pool)  # the reference radii recomputed
    assert (metrics["precision"], metrics["recall"]) == pytest.approx(pr, abs=1e-9)


def test_score_does_not_depend_on_batching_or_on_tensor_vs_iterable(
    evaluator, test_images, tmp_path
):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    whole = score(test_images, evaluator, reference, batch_size=360)
    batched = score(test_images, evaluator, reference, batch_size=7)
    streamed = score(
        (test_images[i : i + 50] for i in range(0, 360, 50)), evaluator, reference, batch_size=32
    )
    for other in (batched, streamed):
        assert other == pytest.approx(whole, rel=1e-6, abs=1e-9)


def test_the_reference_split_scored_against_itself_is_perfect(evaluator, train, tmp_path):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    metrics = score(train, evaluator, reference)
    assert abs(metrics["fid"]) < 1e-6 and abs(metrics["sfid"]) < 1e-6
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0


def test_progress_reports_images_done_and_total(evaluator, test_images, tmp_path):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    ticks = []
    score(test_images, evaluator, reference, batch_size=100, progress=lambda *t: ticks.append(t))
    assert ticks == [(100, 360), (200, 360), (300, 360), (360, 360)]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(20, 1, 8, 8), r"expected uint8 images in \[0, 255\], got dtype torch.float32"),
        (torch.zeros(20, 3, 8, 8, dtype=torch.uint8), "images have 3 channels"),
        (torch.zeros(20, 2, 8, 8, dtype=torch.uint8), "images have 2 channels"),
        (torch.zeros(20, 8, 8, dtype=torch.uint8), r"expected a non-empty batch \[B, C, H, W\]"),
        (torch.zeros(0, 1, 8, 8, dtype=torch.uint8), "expected a non-empty batch"),
        (np.zeros((20, 1, 8, 8), np.uint8), "got ndarray"),
        (torch.zeros(3, 1, 8, 8, dtype=torch.uint8), "needs at least 4 images.*got 3"),
        (iter([]), "no images to compute projection features of"),
        (iter([torch.zeros(3, 1, 8, 8, dtype=torch.uint8)]), "needs at least 4 images.*got 3"),
    ],
)
def test_bad_images_give_a_clear_error(evaluator, images, message, tmp_path):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    with pytest.raises(BenchError, match=message):
        score(images, evaluator, reference)


def test_a_reference_made_by_another_network_is_refused(evaluator, test_images, tmp_path):
    reference = reference_statistics(evaluator, DATA, EvalConfig(), cache_dir=tmp_path)
    with pytest.raises(BenchError, match=r"computed with projection .*compute the reference"):
        score(test_images, ProjectionEvaluator(seed=1), reference)


def adm_batch(path, evaluator, images=None, stats=True, **extra):
    """Write an ADM-style reference batch: arr_0 (NHWC uint8) and/or mu, sigma, mu_s, sigma_s."""
    arrays = dict(extra)
    if images is not None:
        arrays["arr_0"] = images.permute(0, 2, 3, 1).numpy()
    if stats:
        d, s, _ = evaluator.dims
        arrays.update(mu=np.ones(d), sigma=np.eye(d), mu_s=np.zeros(s), sigma_s=2 * np.eye(s))
    np.savez(path, **arrays)
    return EvalConfig(reference=str(path))


def test_an_adm_batch_with_statistics_uses_them_and_its_images_for_kid_and_pr(
    evaluator, test_images, tmp_path
):
    cfg = adm_batch(tmp_path / "ref.npz", evaluator, images=test_images)
    with pytest.warns(UserWarning, match="precomputed statistics as ADM does"):
        reference = reference_statistics(evaluator, DATA, cfg, cache_dir=tmp_path)
    np.testing.assert_array_equal(reference.mu, np.ones(12))
    np.testing.assert_array_equal(reference.sigma_s, 2 * np.eye(10))
    pool, _, _ = features_of(ProjectionEvaluator(), test_images)
    np.testing.assert_allclose(np.sort(reference.features, 0), np.sort(pool, 0), rtol=1e-6)


def test_an_adm_batch_of_images_only_gives_statistics_of_those_images(
    evaluator, test_images, tmp_path
):
    cfg = adm_batch(tmp_path / "ref.npz", evaluator, images=test_images, stats=False)
    reference = reference_statistics(evaluator, DATA, cfg, cache_dir=tmp_path)
    pool, _, _ = features_of(ProjectionEvaluator(), test_images)
    np.testing.assert_allclose(reference.sigma, np.cov(pool, rowvar=False), rtol=1e-6)
    assert score(test_images, evaluator, reference)["fid"] == pytest.approx(0, abs=1e-6)


def test_an_adm_batch_of_statistics_only_leaves_kid_and_pr_undefined(
    evaluator, test_images, tmp_path
):
    cfg = adm_batch(tmp_path / "ref.npz", evaluator)
    with pytest.warns(UserWarning):
        reference = reference_statistics(evaluator, DATA, cfg, cache_dir=tmp_path)
    metrics = score(test_images, evaluator, reference)
    assert np.isfinite(metrics["fid"]) and np.isfinite(metrics["is_mean"])
    assert all(np.isnan(metrics[k]) for k in ("kid", "precision", "recall"))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"mu": np.zeros(12)}, "lacks sigma, mu_s, sigma_s"),
        ({"labels": np.zeros(3)}, "has neither 'arr_0' nor mu, sigma, mu_s, sigma_s"),
        (
            {"mu": np.zeros(2048), "sigma": np.eye(2), "mu_s": np.zeros(1), "sigma_s": np.eye(1)},
            r"mu has shape \[2048\], but projection features need \[12\]",
        ),
    ],
)
def test_bad_adm_batches_give_a_clear_error(evaluator, arrays, message, tmp_path):
    np.savez(tmp_path / "ref.npz", **arrays)
    cfg = EvalConfig(reference=str(tmp_path / "ref.npz"))
    with pytest.raises(BenchError, match=message):
        reference_statistics(evaluator, DATA, cfg, cache_dir=tmp_path)


def test_a_missing_or_corrupt_adm_batch_gives_a_clear_error(evaluator, tmp_path):
    cfg = EvalConfig(reference=str(tmp_path / "absent.npz"))
    with pytest.raises(BenchError, match=r"absent\.npz does not exist"):
        reference_statistics(evaluator, DATA, cfg, cache_dir=tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    cfg = EvalConfig(reference=str(tmp_path / "junk.npz"))
    with pytest.raises(BenchError, match=r"junk\.npz is not a readable \.npz"):
        reference_statistics(evaluator, DATA, cfg, cache_dir=tmp_path)
