"""Pretrained weight files: lookup, hash status, atomic download, offline errors."""

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision

from casdm import weights
from casdm.config import MetricConfig
from casdm.errors import MissingWeightsError
from casdm.metrics import build_metric
from casdm.registry import UnknownNameError


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME for every test, so nothing from the real cache is seen or touched."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def offline(monkeypatch):
    """Every download attempt fails as it does without network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def register(monkeypatch, name: str, content: bytes, source: Path) -> weights.WeightsFile:
    """Point the WEIGHTS entry `name` at a file:// URL serving `content`, with its true hash."""
    source.write_bytes(content)
    entry = dataclasses.replace(
        weights.WEIGHTS[name],
        url=source.as_uri(),
        sha256_prefix=hashlib.sha256(content).hexdigest()[:8],
    )
    monkeypatch.setitem(weights.WEIGHTS, name, entry)
    return entry


def test_registry_holds_the_four_hub_files_with_their_name_hashes():
    assert set(weights.WEIGHTS) == {
        "inception",
        "inception_torchscript",
        "alexnet",
        "vgg16",
        "squeezenet",
    }
    alex = weights.WEIGHTS["alexnet"]
    assert alex.filename == "alexnet-owt-7be5be79.pth"
    assert alex.url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert alex.sha256_prefix == "7be5be79"
    assert weights.WEIGHTS["inception"].sha256_prefix == "6726825d"
    assert weights.WEIGHTS["vgg16"].sha256_prefix == "397923af"
    assert weights.WEIGHTS["squeezenet"].sha256_prefix == "b8a52dc0"


def test_the_torchscript_inception_is_where_cleanfid_downloads_it_and_unverified(torch_home):
    from cleanfid.downloads_helper import inception_url
    from cleanfid.inception_torchscript import InceptionV3W

    entry = weights.WEIGHTS["inception_torchscript"]
    assert entry.url == inception_url and entry.filename == "inception-2015-12-05.pt"
    assert entry.sha256_prefix == ""  # no hash of it is published
    assert "inception-2015-12-05.pt" in InceptionV3W.__init__.__code__.co_consts
    assert weights.status("inception_torchscript") == "missing"
    path = weights.weights_path("inception_torchscript")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"any bytes")
    assert weights.status("inception_torchscript") == "unverified"
    assert weights.ensure("inception_torchscript") == path  # usable; its hash is recorded


def test_lpips_trunk_urls_match_torchvision():
    tv = torchvision.models
    assert weights.WEIGHTS["alexnet"].url == tv.AlexNet_Weights.IMAGENET1K_V1.url
    assert weights.WEIGHTS["vgg16"].url == tv.VGG16_Weights.IMAGENET1K_V1.url
    assert weights.WEIGHTS["squeezenet"].url == tv.SqueezeNet1_1_Weights.IMAGENET1K_V1.url


def test_hub_dir_follows_torch_home(torch_home):
    assert weights.hub_dir() == torch_home / "hub" / "checkpoints"
    assert weights.hub_dir() == Path(torch.hub.get_dir()) / "checkpoints"
    assert (
        weights.weights_path("vgg16") == torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    )


def test_unknown_weights_name_lists_valid_names():
    with pytest.raises(
        UnknownNameError, match="alexnet, inception, inception_torchscript, squeezenet, vgg16"
    ):
        weights.status("resnet")


def test_status_missing_present_corrupt(monkeypatch, tmp_path):
    content = b"weights of a test network"
    register(monkeypatch, "alexnet", content, tmp_path / "src.pth")
    assert weights.status("alexnet") == "missing"
    path = weights.weights_path("alexnet")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert weights.status("alexnet") == "present"
    path.write_bytes(content + b"!")
    assert weights.status("alexnet") == "corrupt"


def test_hash_is_memoised_until_the_file_changes(monkeypatch, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    weights._sha256.cache_clear()
    assert weights.sha256(path) == real(b"abc").hexdigest()
    assert weights.sha256(path) == real(b"abc").hexdigest()
    assert len(calls) == 1
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    assert weights.sha256(path) == real(b"abcd").hexdigest()
    assert len(calls) == 2


def test_fetch_from_file_url_writes_the_checked_file_and_nothing_else(monkeypatch, tmp_path):
    content = os.urandom(3 << 20)  # several chunks
    register(monkeypatch, "squeezenet", content, tmp_path / "src.pth")
    seen = []
    path = weights.fetch("squeezenet", progress=lambda done, total: seen.append((done, total)))
    assert path == weights.weights_path("squeezenet")
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == [path.name]
    assert seen[-1] == (len(content), len(content))
    assert weights.status("squeezenet") == "present"
    assert weights.ensure("squeezenet") == path


def test_ensure_downloads_a_missing_file(monkeypatch, tmp_path):
    content = b"trunk"
    register(monkeypatch, "vgg16", content, tmp_path / "src.pth")
    path = weights.ensure("vgg16")
    assert path.read_bytes() == content


def test_interrupted_download_leaves_no_file(monkeypatch, tmp_path):
    content = os.urandom(3 << 20)
    register(monkeypatch, "alexnet", content, tmp_path / "src.pth")

    def interrupt(done, total):
        if done >= 1 << 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weights.fetch("alexnet", progress=interrupt)
    assert os.listdir(weights.hub_dir()) == []
    assert weights.status("alexnet") == "missing"


def test_download_with_wrong_hash_is_discarded(monkeypatch, tmp_path):
    entry = register(monkeypatch, "alexnet", b"real bytes", tmp_path / "src.pth")
    monkeypatch.setitem(
        weights.WEIGHTS, "alexnet", dataclasses.replace(entry, sha256_prefix="00000000")
    )
    with pytest.raises(MissingWeightsError, match="expected 00000000") as err:
        weights.fetch("alexnet")
    assert "bench weights fetch alexnet" in str(err.value)
    assert os.listdir(weights.hub_dir()) == []


def test_fetch_does_not_replace_a_good_file_when_the_download_fails(monkeypatch, tmp_path, offline):
    content = b"good"
    register(monkeypatch, "alexnet", content, tmp_path / "src.pth")
    path = weights.weights_path("alexnet")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(urllib.error.URLError):
        weights.fetch("alexnet")
    assert path.read_bytes() == content
    assert os.listdir(path.parent) == [path.name]


def test_offline_missing_file_error_says_what_where_and_how(torch_home, offline):
    with pytest.raises(MissingWeightsError) as err:
        weights.ensure("alexnet")
    message = str(err.value)
    folder = torch_home / "hub" / "checkpoints"
    assert "alexnet-owt-7be5be79.pth" in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert str(folder) in message
    assert "bench weights fetch alexnet" in message
    assert "--set metric.trunk=random" in message  # the smoke run the README offers
    assert not any(folder.iterdir())


def test_corrupt_file_error_names_the_mismatch_and_the_fix(offline):
    path = weights.weights_path("vgg16")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    with pytest.raises(MissingWeightsError, match="corrupt") as err:
        weights.ensure("vgg16")
    assert "397923af" in str(err.value)
    assert str(path) in str(err.value)
    assert "bench weights fetch vgg16" in str(err.value)


def test_pretrained_lpips_offline_raises_instead_of_falling_back(offline):
    with pytest.raises(MissingWeightsError, match="bench weights fetch alexnet"):
        build_metric(MetricConfig(name="lpips", net="alex", trunk="pretrained"))


def test_pretrained_lpips_loads_the_registered_file(monkeypatch, tmp_path, offline):
    """Random SqueezeNet weights, registered like real ones, end up in the LPIPS trunk."""
    torch.manual_seed(0)
    trunk = torchvision.models.squeezenet1_1()
    path = weights.weights_path("squeezenet")
    path.parent.mkdir(parents=True)
    torch.save(trunk.state_dict(), path)
    entry = dataclasses.replace(
        weights.WEIGHTS["squeezenet"],
        sha256_prefix=hashlib.sha256(path.read_bytes()).hexdigest()[:8],
    )
    monkeypatch.setitem(weights.WEIGHTS, "squeezenet", entry)
    metric = build_metric(MetricConfig(name="lpips", net="squeeze", trunk="pretrained"))
    assert metric.label == "lpips-squeeze"
    first_conv = metric.lpips.net.slice1[0].weight
    assert torch.equal(first_conv, trunk.features[0].weight)


def test_a_plugin_registers_its_weights_file_and_ensure_fetches_and_checks_it(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(weights, "WEIGHTS", dict(weights.WEIGHTS))  # undone after the test
    content = b"plugin weights"
    source = tmp_path / "plugin-weights.pth"
    source.write_bytes(content)
    file = weights.WeightsFile(
        "plugin_net",
        "plugin-weights.pth",
        source.as_uri(),
        hashlib.sha256(content).hexdigest()[:8],
        "an example plugin's metric loss",
    )
    assert weights.register(file) is file and weights.register(file) is file
    assert weights.status("plugin_net") == "missing"
    assert weights.ensure("plugin_net").read_bytes() == content
    assert weights.status("plugin_net") == "present"
    with pytest.raises(ValueError, match="weights name 'alexnet' is taken"):
        weights.register(dataclasses.replace(file, name="alexnet"))
