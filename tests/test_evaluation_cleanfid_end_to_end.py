"""FID and KID end to end (`bench eval --reference FOLDER` and a trial) against clean-fid's own
`compute_fid` and `compute_kid` on the same folders and the same (random) weights.

The formula-level parity is in test_evaluation_inception; here the whole path is compared: the
folders read in clean-fid's file order, the reference pass and its cache, the kept features
KID draws its subsets from by index. Random weights (`--random-weights`, `eval.random_weights`)
are seeded stand-ins written by bench's own loaders; clean-fid is pointed at the same files.
The reference is larger than the samples in one call and smaller in the other, so that KID's
subsets of min(N, M) rows select rows of the larger set by index (with equal N and M the
choice is a permutation, and the order of either set would not show).
Inception at 299x299 runs at about 5 images per second on a CPU: folders of 19 and 21 images.
"""

import json
from pathlib import Path

import cleanfid.features
import cleanfid.fid
import numpy as np
import pytest
import torch
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image

import bench.cli
from bench.evaluation.formulas import KID_SEED, frechet_distance, psd_sqrt
from bench.evaluation.inception import random_inception_weights, torchscript_standin
from bench.evaluation.reference import reference_statistics
from bench.study import load_study
from bench.trial import Scorer, resolve_device, run_trial
from casdm import weights

SIZES = {"a": 19, "b": 21}  # images per folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of random 16x16 RGB PNGs, named so that Path order and clean-fid's string
    order of the paths differ ("x/0.png" after "x-1.png" as strings, before as parts)."""
    out = {}
    for seed, (name, n) in enumerate(SIZES.items()):
        folder = tmp_path_factory.mktemp(f"images_{name}")
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, 16, 16, 3), generator=generator).to(torch.uint8)
        (folder / "x").mkdir()
        for i, image in enumerate(images.numpy()):
            where = folder / "x" / f"{i:02d}.png" if i % 3 == 0 else folder / f"x-{i:02d}.png"
            Image.fromarray(image).save(where)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def random_weights_for_cleanfid(tmp_path_factory):
    """Where clean-fid finds the weights bench's random-weights evaluators use (seed 0): the
    port's state dict in a torch hub folder (legacy_pytorch) and the TorchScript stand-in
    (clean, legacy_tensorflow) in a folder InceptionV3W is pointed at."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        weights.hub_dir().mkdir(parents=True)
        torch.save(random_inception_weights(seed=0), weights.weights_path("inception"))
        torchscript_standin(seed=0).save(str(home / "inception-2015-12-05.pt"))

        def from_home(path, download=True, resize_inside=False):
            return InceptionV3W(str(home), download=False, resize_inside=resize_inside)

        mp.setattr(cleanfid.features, "InceptionV3W", from_home)
        yield home


STATISTICS: list[tuple[np.ndarray, ...]] = []  # clean-fid's (mu1, sigma1, mu2, sigma2), by call


@pytest.fixture(autouse=True)
def frechet_by_eigh(monkeypatch):
    """clean-fid's compute_fid with its last step, frechet_distance(mu1, sigma1, mu2, sigma2),
    done by bench's (eigendecomposition) instead of scipy's 2,048-d sqrtm, 30 s a call on this
    CPU: what is compared end to end is clean-fid's statistics; that the two formulas agree on
    the same statistics is tested in test_evaluation_metrics. Records the statistics."""

    def frechet(mu1, sigma1, mu2, sigma2):
        STATISTICS.append((mu1, sigma1, mu2, sigma2))
        return frechet_distance(mu1, sigma1, mu2, sigma2, "clean-fid")

    monkeypatch.setattr(cleanfid.fid, "frechet_distance", frechet)


def fid_tolerance(sigma1, sigma2, n1, n2):
    """How far two FIDs of the same features may lie apart when their float64 moments were
    summed in other orders, from the computation: Tr (S1 S2)^1/2 sums the square roots of the
    D eigenvalues of M = R S1 R. With n1, n2 < D images, D - r of them (r = min(n1, n2) - 1)
    are 0 in exact arithmetic and come out of a symmetric eigensolver as noise of size at most
    D eps ||M|| (its backward error), each adding up to sqrt(D eps ||M||) to the trace: twice
    (two computations), times 2 (FID counts the trace twice)."""
    root = psd_sqrt(sigma2)
    norm = np.linalg.eigvalsh(root @ sigma1 @ root).max()
    d = len(sigma1)
    zeros = d - (min(n1, n2) - 1)
    return 4 * zeros * np.sqrt(d * np.finfo(np.float64).eps * norm)


def cleanfid_scores(samples, reference, mode):
    """clean-fid's compute_fid and compute_kid(samples, reference, mode); KID's subsets drawn
    after np.random.seed(KID_SEED), as bench seeds them."""
    common = dict(mode=mode, num_workers=0, batch_size=8, device=torch.device("cpu"))
    common.update(verbose=False, use_dataparallel=False)
    fid = cleanfid.fid.compute_fid(str(samples), str(reference), **common)
    np.random.seed(KID_SEED)
    kid = cleanfid.fid.compute_kid(str(samples), str(reference), **common)
    return fid, kid


def bench_eval_json(capsys, samples, reference, mode, cache):
    code = bench.cli.main(
        [
            "eval", str(samples), "--reference", str(reference), "--protocol", mode,
            "--random-weights", "--no-channels-last", "--json", "--quiet", "--device", "cpu",
            "--cache-dir", str(cache), "--batch-size", "8",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


# KID: the same float32 feature arrays (bit for bit, channels-last off), the same subsets (the
# same seed, the same row order), the same function: equal exactly.


def test_bench_eval_against_a_folder_is_cleanfids_compute_fid_and_compute_kid(
    capsys, folders, random_weights_for_cleanfid, cleanfid_features_once, tmp_path
):
    mode = "legacy_tensorflow"
    for samples, reference in ((folders["a"], folders["b"]), (folders["b"], folders["a"])):
        ours = bench_eval_json(capsys, samples, reference, mode, tmp_path / "cache")
        assert ours["reference"]["source"] == "folder"
        assert ours["reference"]["images"] == ours["reference"]["features"]
        assert (ours["n"], ours["reference"]["images"]) == (
            len(list(samples.rglob("*.png"))),
            len(list(reference.rglob("*.png"))),
        )
        fid, kid = cleanfid_scores(samples, reference, mode)
        _, sigma1, _, sigma2 = STATISTICS[-1]
        tolerance = fid_tolerance(sigma1, sigma2, ours["n"], ours["reference"]["images"])
        assert ours["scores"]["fid"] == pytest.approx(fid, rel=0, abs=tolerance)
        assert ours["scores"]["kid"] == kid
        # The reference statistics are clean-fid's: its mean is numpy's float32 pairwise sum of
        # n rows (error <= ceil(log2 n) eps32 max|x| per column, plus rounding the result),
        # its covariance a float64 sum over the same rows (<= n eps64 max|x_i| max|x_j|).
        cache_file = next((tmp_path / "cache" / "reference").glob(f"{reference.name}-*.npz"))
        with np.load(cache_file) as cached:
            scale = np.abs(cached["features"]).max(0).astype(np.float64)
            n = len(cached["features"])
            mu_tolerance = (np.ceil(np.log2(n)) + 1) * np.finfo(np.float32).eps * scale
            assert np.all(np.abs(cached["mu"] - STATISTICS[-1][2]) <= mu_tolerance)
            sigma_tolerance = n * np.finfo(np.float64).eps * np.outer(scale, scale)
            assert np.all(np.abs(cached["sigma"] - sigma2) <= sigma_tolerance)


def test_a_trials_kid_against_a_folder_reference_is_cleanfids_compute_kid(
    folders, random_weights_for_cleanfid, tmp_path, monkeypatch
):
    """A trial (train, sample, score) whose eval.reference is a folder of 21 images: its 19
    samples, written out as PNGs in their order, give clean-fid the same FID and KID."""
    mode = "legacy_pytorch"
    monkeypatch.chdir(tmp_path)
    study = load_study(
        str(Path(__file__).parent / "studies" / "tiny.toml"),
        [
            "eval.evaluator=inception", f"eval.protocol={mode}", "eval.random_weights=true",
            "eval.channels_last=false", "eval.bootstrap=0", f"eval.reference={folders['b']}",
            "eval.batch_size=8", "sample.num_samples=19", "sample.batch_size=19",
        ],
    )  # fmt: skip
    config = study.config(study.cells()[0])
    scorer = Scorer(tmp_path / "cache", resolve_device("cpu"))
    outcome = run_trial(config, tmp_path / "trial", scorer=scorer)
    samples = tmp_path / "samples"
    samples.mkdir()
    with np.load(outcome.samples_npz) as npz:
        images = npz["arr_0"]
    assert len(images) == 19
    for i, image in enumerate(images):
        Image.fromarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image).save(
            samples / f"{i:03d}.png"
        )
    fid, kid = cleanfid_scores(samples, folders["b"], mode)
    _, sigma1, _, sigma2 = STATISTICS[-1]
    tolerance = fid_tolerance(sigma1, sigma2, 19, 21)
    assert outcome.scores["fid"] == pytest.approx(fid, rel=0, abs=tolerance)
    assert outcome.scores["kid"] == kid
    # The trial's reference is every image of the folder, in clean-fid's order.
    evaluator, reference = scorer.prepare(config)
    assert reference.meta["images"] == 21
    again = reference_statistics(evaluator, config.data, config.eval, cache_dir=tmp_path / "c2")
    np.testing.assert_array_equal(again.features, reference.features)
