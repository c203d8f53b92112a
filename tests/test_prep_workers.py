"""eval.prep_workers: the evaluator's CPU stage in worker processes (bench.evaluation.prefetch).

The features must be the very same tensors as the in-process pass's, the workers must really
run (and only during the pass), and every way a pass can end must leave no child process.
Inception at 299x299 is slow on a CPU: a handful of 16x16 images.
"""

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.claims import portable_digest
from bench.config import EvalConfig, RunConfig
from bench.errors import BenchError
from bench.evaluation import prefetch
from bench.evaluation.classifier import ClassifierConfig, ClassifierEvaluator, SmallCNN
from bench.evaluation.inception import random_inception
from bench.evaluation.stream import FeatureStats, batches, collect
from bench.trial import Scorer
from casdm.config import ConfigError

CPU = torch.device("cpu")
BATCH = 3


def uint8_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator).to(torch.uint8)


@pytest.fixture(scope="module")
def inception():
    return random_inception("clean", device=CPU)


@pytest.fixture(scope="module")
def classifier():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SmallCNN(1, 10, ClassifierConfig()).eval()
    return ClassifierEvaluator(
        net, dataset="digits", resolution=8, channels=1, accuracy=0.0, device=CPU
    )


def one_pass(evaluator, images: torch.Tensor, workers: int) -> tuple[FeatureStats, list[int]]:
    """Every feature of `images`, and the live child processes seen after each batch."""
    children = []
    chunks, total = batches(images, BATCH, "test images")
    stats = collect(
        chunks,
        evaluator,
        keep_pool=None,
        keep_logits=True,
        keep_spatial=True,
        total=total,
        progress=lambda done, of: children.append(len(multiprocessing.active_children())),
        workers=workers,
    )
    return stats, children


def assert_same(ours: FeatureStats, theirs: FeatureStats) -> None:
    assert torch.equal(torch.cat(ours.pool_features), torch.cat(theirs.pool_features))
    assert torch.equal(torch.cat(ours.spatial_features), torch.cat(theirs.spatial_features))
    assert torch.equal(torch.cat(ours.logits), torch.cat(theirs.logits))
    for kind in ("pool", "spatial"):
        a, b = getattr(ours, kind), getattr(theirs, kind)
        assert np.array_equal(a.mean(), b.mean()) and np.array_equal(a.cov(), b.cov())


def test_inception_features_with_workers_are_the_in_process_ones(inception):
    images = uint8_images(6, 3, 16, seed=0)
    in_process, alone = one_pass(inception, images, workers=0)
    prefetched, children = one_pass(inception, images, workers=2)
    assert alone == [0, 0] and children == [2, 2]  # the workers ran, and only during the pass
    assert_same(prefetched, in_process)
    assert prefetched.n == 6
    assert not multiprocessing.active_children()


def test_classifier_features_with_workers_are_the_in_process_ones(classifier):
    images = uint8_images(7, 1, 8, seed=1)  # a last batch of one
    in_process, _ = one_pass(classifier, images, workers=0)
    prefetched, children = one_pass(classifier, images, workers=2)
    assert children == [2, 2, 2]
    assert_same(prefetched, in_process)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("error", [RuntimeError("sampler failed"), KeyboardInterrupt()])
def test_an_error_mid_pass_propagates_and_stops_the_workers(classifier, error):
    def failing():
        for seed in range(2):
            yield uint8_images(BATCH, 1, 8, seed)
        raise error

    with pytest.raises(type(error)):
        collect(failing(), classifier, keep_pool=None, keep_logits=False, workers=2)
    assert not multiprocessing.active_children()


def _refuse_large(images: torch.Tensor) -> torch.Tensor:
    if images.shape[0] > 2:
        raise BenchError("a worker refused a batch")
    return images


def test_an_error_in_a_worker_reaches_the_caller(classifier, monkeypatch):
    monkeypatch.setattr(classifier, "prepare", _refuse_large)
    chunks, _ = batches(uint8_images(6, 1, 8, seed=2), 2, "test images")
    collect(chunks, classifier, keep_pool=None, keep_logits=False, workers=2)  # batches of 2
    chunks, _ = batches(uint8_images(6, 1, 8, seed=2), 3, "test images")
    with pytest.raises(BenchError, match="a worker refused a batch"):
        collect(chunks, classifier, keep_pool=None, keep_logits=False, workers=2)
    assert not multiprocessing.active_children()


def test_automatic_workers_only_where_a_gpu_waits_for_a_cpu_stage(
    inception, classifier, monkeypatch
):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert prefetch.resolve_workers(-1, inception) == 0  # on the CPU
    assert prefetch.resolve_workers(3, inception) == 3
    assert prefetch.resolve_workers(0, inception) == 0
    monkeypatch.setattr(inception, "device", torch.device("cuda"))
    monkeypatch.setattr(classifier, "device", torch.device("cuda"))
    for cores, workers in ((1, 0), (2, 1), (5, 4), (9, 8), (64, 8)):
        monkeypatch.setattr(prefetch.threads, "available_cores", lambda cores=cores: cores)
        assert prefetch.resolve_workers(-1, inception) == workers
    assert prefetch.resolve_workers(-1, classifier) == 0  # nothing to prepare
    assert prefetch.resolve_workers(2, classifier) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks share the cores
    assert prefetch.resolve_workers(-1, inception) == 8  # 64 // 4 - 1 = 15, capped
    monkeypatch.setattr(prefetch.threads, "available_cores", lambda: 16)
    assert prefetch.resolve_workers(-1, inception) == 3


def test_prep_workers_is_validated_and_identifies_no_configuration():
    assert EvalConfig().prep_workers == -1
    assert EvalConfig(prep_workers=4).prep_workers == 4
    with pytest.raises(ConfigError, match=r"prep_workers: must be >= 0 .*or -1 .*got -2"):
        EvalConfig(prep_workers=-2)
    # Like the device, it may differ between the machines of one study and changes no score.
    default, other = RunConfig(), RunConfig(eval=EvalConfig(prep_workers=4))
    assert portable_digest([default]) == portable_digest([other])
    assert Scorer.key(default) == Scorer.key(other)
    changed = RunConfig(eval=EvalConfig(batch_size=7))
    assert portable_digest([default]) != portable_digest([changed])


def test_a_preprocessing_that_cannot_reach_the_workers_is_refused(classifier, monkeypatch):
    monkeypatch.setattr(classifier, "prepare", lambda images: images)
    chunks, _ = batches(uint8_images(3, 1, 8, seed=3), BATCH, "test images")
    with pytest.raises(BenchError, match=r"cannot be sent to worker processes.*prep_workers = 0"):
        collect(chunks, classifier, keep_pool=None, keep_logits=False, workers=2)
    assert not multiprocessing.active_children()


KILLED_PARENT = """
import multiprocessing, time, torch
from bench.evaluation.classifier import ClassifierConfig, ClassifierEvaluator, SmallCNN
from bench.evaluation.stream import collect

evaluator = ClassifierEvaluator(SmallCNN(1, 10, ClassifierConfig()), dataset="digits",
    resolution=8, channels=1, accuracy=0.0, device=torch.device("cpu"))

def chunks():
    yield torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(120)

collect(chunks(), evaluator, keep_pool=None, keep_logits=False, workers=2)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (its new parent may never reap it)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux: PR_SET_PDEATHSIG")
def test_workers_end_when_their_process_is_killed():
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(map(_running, workers))
    finally:
        parent.kill()  # SIGKILL: no Python code of the parent runs
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, workers))
