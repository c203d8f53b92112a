"""`bench eval` and `bench weights status|fetch` through the CLI entry point (exit codes too)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bench.cli
from bench.config import EvalConfig
from bench.errors import EXIT_BAD_INPUT
from bench.evaluation import build_evaluator
from casdm import weights
from casdm.config import DataConfig
from casdm.data import load_dataset, save_npz, to_uint8

DIGITS8 = DataConfig(dataset="digits", resolution=8)
CLOSED_PROXY = "http://127.0.0.1:9"  # nothing listens: a download is refused at once


@pytest.fixture(autouse=True)
def only_these_commands(monkeypatch):
    """The CLI with just the commands under test (the others are tested elsewhere)."""
    commands = [c for c in bench.cli.COMMANDS if c[0] in ("eval", "weights")]
    monkeypatch.setattr(bench.cli, "COMMANDS", commands)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, seeded_results):
    """An evaluator cache holding the 8x8 digits classifier: the one the session's seeded
    results trained for the tiny study (the same classifier), copied; no reference statistics."""
    cache = tmp_path_factory.mktemp("cache")
    shutil.copytree(seeded_results / "cache" / "classifier", cache / "classifier")

    def files():
        return sorted((p.name, p.stat().st_mtime_ns) for p in (cache / "classifier").iterdir())

    seeded = files()
    build_evaluator(EvalConfig(), DIGITS8, device="cpu", cache_dir=cache)
    assert files() == seeded  # read back, not trained again
    return cache


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The held-out digits at 8x8 as an ADM .npz: real images, so a good score."""
    path = tmp_path_factory.mktemp("samples") / "samples.npz"
    save_npz(path, to_uint8(load_dataset(DIGITS8, "test").images))
    return path


def bench_eval(capsys, *args):
    code = bench.cli.main(["eval", *map(str, args), "--quiet", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_eval_prints_a_table_naming_the_evaluator(capsys, cache, samples):
    code, out, _ = bench_eval(capsys, samples, "--dataset", "digits", "--cache-dir", cache)
    assert code == 0
    for name in ("FID", "sFID", "IS", "KID", "Precision", "Recall"):
        assert f"{name} (classifier:digits)" in out
    assert "360 samples from" in out and "held-out accuracy of the classifier" in out


def test_bench_eval_json_is_machine_readable(capsys, cache, samples):
    args = (samples, "--dataset", "digits", "--cache-dir", cache, "--n", 200, "--json")
    code, out, _ = bench_eval(capsys, *args)
    assert code == 0
    result = json.loads(out)
    assert result["n"] == 200 and result["resolution"] == 8
    assert result["evaluator"]["name"] == "classifier:digits"
    assert result["evaluator"]["random_weights"] is False
    assert result["evaluator"]["protocol"] == "trained-classifier"
    assert result["evaluator"]["accuracy"] >= 0.97
    assert set(result["scores"]) == {
        "fid",
        "sfid",
        "is_mean",
        "is_std",
        "kid",
        "precision",
        "recall",
    }
    assert result["labels"]["fid"] == "FID (classifier:digits)"
    assert result["reference"]["split"] == "train" and result["reference"]["images"] == 1437
    assert 0 < result["scores"]["fid"] < 5  # real held-out digits: close to the train split
    # The network in clean-fid's NCHW layout instead of channels-last: round-off apart, the same.
    assert result["evaluator"]["channels_last"] is True
    code, out, _ = bench_eval(capsys, *args, "--no-channels-last")
    nchw = json.loads(out)
    assert code == 0 and nchw["evaluator"]["channels_last"] is False
    for key, value in result["scores"].items():
        assert nchw["scores"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_bench_eval_scores_a_folder_of_pngs(capsys, cache, tmp_path):
    images = to_uint8(load_dataset(DIGITS8, "test").images[:12])
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy(), mode="L").save(tmp_path / f"{i:03d}.png")
    code, out, _ = bench_eval(
        capsys, tmp_path, "--dataset", "digits", "--cache-dir", cache, "--json"
    )
    assert code == 0 and json.loads(out)["n"] == 12


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no images in folder"),
        ({"notes.txt": "no images here"}, "found 1 .txt"),
        ({"a.png": "not a png"}, "cannot read image"),
        (None, "does not exist"),
    ],
)
def test_bench_eval_bad_sample_folders_exit_2_with_a_message(
    capsys, cache, tmp_path, files, message
):
    folder = tmp_path / "samples"
    if files is not None:
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    code, out, err = bench_eval(capsys, folder, "--dataset", "digits", "--cache-dir", cache)
    assert code == EXIT_BAD_INPUT and out == ""
    assert message in err


@pytest.mark.parametrize(
    ("images", "extra", "message"),
    [
        (np.zeros((3, 8, 8, 1), np.uint8), (), "needs at least 4 images"),
        (
            np.zeros((6, 8, 8, 1), np.uint8),
            ("--is-protocol", "torch-fidelity"),
            "needs at least 10 images",
        ),
        (
            np.stack([np.zeros((20, 8, 8)), np.ones((20, 8, 8)), np.zeros((20, 8, 8))], -1).astype(
                np.uint8
            ),
            (),
            r"samples.npz holds 20 images of 8x8 pixels with 3 channel\(s\) \(RGB, in colour\);"
            r".*convert\('L'\).*--evaluator inception",
        ),
        (np.zeros((20, 8, 8, 1), np.uint8), ("--n", "30"), "--n 30: .* holds 20 images"),
        (np.zeros((20, 8, 12, 1), np.uint8), (), "samples must be square"),
        (np.zeros((20, 8, 8, 1), np.float32), (), "dtype float32"),
        (np.zeros((20, 8, 8, 1), np.uint8), ("--evaluator", "fancy"), "unknown evaluator 'fancy'"),
        (np.zeros((20, 8, 8, 1), np.uint8), ("--random-weights",), "classifier evaluator has none"),
        (np.zeros((20, 8, 8, 1), np.uint8), ("--protocol", "clean"), "is an Inception protocol"),
    ],
)
def test_bench_eval_bad_samples_exit_2_with_a_message(
    capsys, cache, tmp_path, images, extra, message
):
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=images)
    code, out, err = bench_eval(capsys, path, "--dataset", "digits", "--cache-dir", cache, *extra)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith("error: ")
    assert re.search(message, err), err


def test_bench_eval_scores_grayscale_saved_as_rgb_like_grayscale(capsys, cache, samples, tmp_path):
    code, gray, _ = bench_eval(
        capsys, samples, "--dataset", "digits", "--cache-dir", cache, "--json"
    )
    assert code == 0
    rgb = tmp_path / "rgb.npz"
    with np.load(samples) as npz:
        np.savez(rgb, arr_0=np.repeat(npz["arr_0"], 3, axis=-1))
    code, out, err = bench_eval(capsys, rgb, "--dataset", "digits", "--cache-dir", cache, "--json")
    assert code == 0 and "all three equal: scored as grayscale" in err
    assert json.loads(out)["scores"] == json.loads(gray)["scores"]


def test_bench_eval_unknown_dataset_exits_2_listing_the_valid_ones(capsys, samples, tmp_path):
    code, _, err = bench_eval(capsys, samples, "--dataset", "mnist", "--cache-dir", tmp_path)
    assert code == EXIT_BAD_INPUT and "digits" in err and "cifar10" in err


def test_weights_status_lists_every_file_with_its_state_and_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = weights.weights_path("inception")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the real weights")
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    assert bench.cli.main(["weights", "status"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    lines = {row[1].strip(): "│".join(row) for row in rows}
    assert set(lines) == set(weights.WEIGHTS)
    assert "corrupt" in lines["inception"] and str(path) in lines["inception"]
    for name in ("inception_torchscript", "alexnet", "vgg16", "squeezenet"):
        assert "missing" in lines[name] and str(weights.weights_path(name)) in lines[name]
    assert "bench weights fetch inception inception_torchscript alexnet vgg16 squeezenet" in out


def test_weights_fetch_offline_exits_2_naming_url_and_folder_and_leaves_nothing(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, CLOSED_PROXY)
    assert bench.cli.main(["weights", "fetch", "inception", "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert weights.entry("inception").url in err and str(weights.weights_path("inception")) in err
    assert not any(weights.hub_dir().glob("*"))


def test_weights_fetch_skips_present_files_and_rejects_unknown_names(capsys, monkeypatch):
    monkeypatch.setattr(weights, "status", lambda name: "present")

    def refuse(name, progress=None):
        raise AssertionError(f"downloaded {name} although it is present")

    monkeypatch.setattr(weights, "fetch", refuse)
    assert bench.cli.main(["weights", "fetch", "--quiet"]) == 0
    assert "inception: present at" in capsys.readouterr().err
    assert bench.cli.main(["weights", "fetch", "resnet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert (
        "valid weights files: alexnet, inception, inception_torchscript, squeezenet, vgg16" in err
    )


def test_weights_fetch_downloads_the_named_files(capsys, monkeypatch):
    monkeypatch.setattr(weights, "status", lambda name: "missing")
    fetched = []
    monkeypatch.setattr(weights, "fetch", lambda name, progress=None: fetched.append(name))
    assert bench.cli.main(["weights", "fetch", "vgg16", "alexnet", "--quiet"]) == 0
    assert fetched == ["vgg16", "alexnet"]


def test_bench_eval_cache_is_the_users_outside_a_results_folder(tmp_path, monkeypatch):
    from bench.commands.eval import default_cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "casdm-bench"
    assert not (tmp_path / "results").exists()  # nothing created in the working folder
    (tmp_path / "results").mkdir()
    assert default_cache_dir() == Path("results") / "cache"


def test_bench_eval_needs_a_dataset_or_a_reference(capsys, samples, tmp_path):
    code, _, err = bench_eval(capsys, samples, "--cache-dir", tmp_path)
    assert code == EXIT_BAD_INPUT
    assert "--dataset NAME" in err and "--reference FOLDER|NPZ" in err
    code, _, err = bench_eval(capsys, samples, "--reference", tmp_path, "--evaluator", "classifier")
    assert code == EXIT_BAD_INPUT
    assert "trained on a dataset: give --dataset NAME" in err


def test_the_output_says_which_reference_images_were_used():
    """A folder: dataset is split 90/10 like training data: the output names the split, its
    size, and the --reference call that takes every image (clean-fid's compute_fid)."""
    from bench.commands.eval import reference_source

    meta = {"source": "dataset", "dataset": "folder:/data/real", "split": "train", "images": 18}
    assert reference_source(meta) == (
        "folder:/data/real (train split, 18 images): the seeded 90% train split of "
        "folder:/data/real, not all of it; --reference /data/real scores against every image"
    )
    meta = {"source": "folder", "folder": "/data/real", "images": 20}
    assert reference_source(meta) == "all 20 images of the folder /data/real"
    meta = {"source": "dataset", "dataset": "digits", "split": "train", "images": 1437}
    assert reference_source(meta) == "digits (train split, 1437 images)"
