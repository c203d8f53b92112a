"""The inception evaluator's protocols against clean-fid's own compute_fid / compute_kid.

The real weights cannot be downloaded here, so stand-ins are built locally and saved under the
official file names in a temporary torch hub folder: a seeded random state dict for the
pytorch-fid port (which clean-fid's legacy_pytorch `InceptionV3` loads through torch hub) and a
seeded random TorchScript module with the interface of inception-2015-12-05.pt (which clean-fid's
`InceptionV3W` loads by path). Our evaluators and clean-fid read the same files.
Inception at 299x299 is slow on a CPU: a handful of images only.
"""

import inspect

import cleanfid.features
import cleanfid.fid
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cleanfid.inception_torchscript import InceptionV3W
from PIL import Image

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import build_evaluator, score_label
from bench.evaluation.formulas import KID_SEED, kernel_inception_distance
from bench.evaluation.inception import (
    PROTOCOLS,
    TORCHSCRIPT_FILE,
    _port_architecture,
    _TorchScriptStandIn,
    cleanfid_inputs,
    cleanfid_port,
    inception_evaluator,
    load_inception_weights,
    random_inception_weights,
    torchscript_standin,
)
from bench.evaluation.stream import FeatureStats, batches, collect
from casdm import weights
from casdm.config import ConfigError, DataConfig
from casdm.data import read_images
from casdm.errors import MissingWeightsError

CLOSED_PROXY = "http://127.0.0.1:9"  # nothing listens: a download is refused at once
IMAGES = 5  # per folder: a batch of BATCH, then a batch of one
BATCH = 4


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """TORCH_HOME holding both stand-ins under the official names (output biases non-zero)."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        weights.hub_dir().mkdir(parents=True)
        torch.save(random_inception_weights(seed=1), weights.weights_path("inception"))
        torchscript_standin(seed=2).save(str(weights.weights_path("inception_torchscript")))
        yield weights.hub_dir()


@pytest.fixture(scope="module")
def evaluators(hub):
    """Ours for each protocol, through the loading code build_evaluator uses after its checks,
    in the layout clean-fid calls its network in (eval.channels_last off)."""
    out = {
        name: inception_evaluator(
            name, weights.weights_path(spec.weights), device=torch.device("cpu")
        )
        for name, spec in PROTOCOLS.items()
    }
    for evaluator in out.values():
        evaluator.channels_last = False
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of IMAGES random 32x32 RGB PNGs (different seeds)."""
    out = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"images{seed}")
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (IMAGES, 32, 32, 3), generator=generator).to(torch.uint8)
        for i, image in enumerate(images.numpy()):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
        out.append(folder)
    return out


@pytest.fixture
def cleanfid_reads_the_hub(hub, monkeypatch):
    """clean-fid's build_feature_extractor loads InceptionV3W from /tmp, downloading if absent:
    point that one path at the hub folder (and forbid downloads); everything else is its own."""

    def from_hub(path, download=True, resize_inside=False):
        return InceptionV3W(str(hub), download=False, resize_inside=resize_inside)

    monkeypatch.setattr(cleanfid.features, "InceptionV3W", from_hub)


def cheap_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """A function of all of mu and sigma without the 2048-d `sqrtm` (30 s each on this CPU).

    clean-fid's compute_fid calls it on its statistics, and the test calls it on ours, so
    parity of FID here is parity of (mu, sigma), compared in every entry. That our
    `frechet_distance` equals clean-fid's on the same statistics is tested in
    test_evaluation_metrics (and with 5 images per set these covariances have rank 4 of 2048).
    """
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) + (sigma1 * sigma2).sum()
    )


@pytest.fixture(scope="module")
def folder_stats(evaluators, folders):
    """(protocol, eval.channels_last) -> our statistics of both folders, each computed once."""
    computed = {}

    def stats(mode: str, channels_last: bool) -> list[FeatureStats]:
        if (mode, channels_last) not in computed:
            evaluator = evaluators[mode]
            evaluator.channels_last = channels_last
            keep = {"keep_pool": None, "keep_logits": True, "keep_spatial": True}
            stats = []
            try:
                for folder in folders:
                    chunks, total = batches(read_images(folder), BATCH, "test images")
                    stats.append(collect(chunks, evaluator, total=total, **keep))
                computed[mode, channels_last] = stats
            finally:
                evaluator.channels_last = False
        return computed[mode, channels_last]

    return stats


def our_scores(stats: list[FeatureStats]) -> tuple[float, float, list[np.ndarray]]:
    (s1, s2) = stats
    fid = cleanfid.fid.frechet_distance(  # cheap_frechet in the test below
        s1.pool.mean(), s1.pool.cov(), s2.pool.mean(), s2.pool.cov()
    )
    kid = kernel_inception_distance(s1.kept_pool(), s2.kept_pool())
    return fid, kid, [s.kept_pool() for s in stats]


@pytest.fixture
def cleanfid_features_once(monkeypatch):
    """clean-fid's get_folder_features, each folder's features extracted once per test: its
    compute_kid reads the same folders with the same arguments as its compute_fid (they differ
    in the progress-bar text only), so it gets the very arrays compute_fid's extraction
    returned. Returns {folder: features} as clean-fid extracted them."""
    extract = cleanfid.fid.get_folder_features
    signature = inspect.signature(extract)
    extracted: dict[str, np.ndarray] = {}

    def once(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        options = {k: v for k, v in call.arguments.items() if k not in ("model", "description")}
        key = repr(sorted(options.items()))  # the folder and every option but the model
        if key not in extracted:
            extracted[key] = extract(*args, **kwargs)
        return extracted[key]

    monkeypatch.setattr(cleanfid.fid, "get_folder_features", once)
    return extracted


@pytest.mark.parametrize("mode", list(PROTOCOLS))
def test_fid_and_kid_equal_cleanfids_compute_fid_and_compute_kid(
    mode, folder_stats, folders, cleanfid_reads_the_hub, cleanfid_features_once, monkeypatch
):
    monkeypatch.setattr(cleanfid.fid, "frechet_distance", cheap_frechet)
    fid, kid, features = our_scores(folder_stats(mode, channels_last=False))
    common = dict(mode=mode, num_workers=0, batch_size=BATCH, device=torch.device("cpu"))
    common.update(verbose=False, use_dataparallel=False)
    fdirs = [str(folder) for folder in folders]
    their_fid = cleanfid.fid.compute_fid(*fdirs, **common)
    np.random.seed(KID_SEED)
    their_kid = cleanfid.fid.compute_kid(*fdirs, **common)
    assert fid == pytest.approx(their_fid, rel=1e-6, abs=0)
    assert kid == pytest.approx(their_kid, rel=1e-6, abs=0)
    # ... because the features themselves are clean-fid's, bit for bit (both folders, as
    # compute_fid extracted them with its own feature extractor).
    theirs = list(cleanfid_features_once.values())
    assert len(theirs) == 2
    for ours, their in zip(features, theirs, strict=True):
        assert np.array_equal(ours, their)
    assert np.abs(theirs).max() > 0.1  # random weights that still give non-trivial features


def low_rank_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """The Frechet distance of two sets of n < D features, exactly and cheaply: with A the
    centred features, S = A^T A / (n - 1), and the non-zero eigenvalues of S1 S2 are those of
    M M^T / c, M = A1 A2^T, c = (n1 - 1)(n2 - 1): Tr (S1 S2)^1/2 = sum of M's singular values
    / sqrt(c)."""
    a1, a2 = (f - f.mean(0) for f in (f1.astype(np.float64), f2.astype(np.float64)))
    c1, c2 = len(f1) - 1, len(f2) - 1
    trace_root = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
    diff = f1.mean(0, dtype=np.float64) - f2.mean(0, dtype=np.float64)
    return float(diff @ diff + (a1**2).sum() / c1 + (a2**2).sum() / c2 - 2 * trace_root)


def test_low_rank_fid_is_the_frechet_distance():
    rng = np.random.default_rng(0)
    # The identity holds for any n; with n > D the covariances have full rank, where scipy's
    # sqrtm (clean-fid's) is accurate to round-off.
    f1, f2 = rng.normal(size=(50, 12)), rng.normal(0.3, 2, size=(60, 12))
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    expected = cleanfid.fid.frechet_distance(*stats[0], *stats[1])  # scipy's sqrtm
    assert low_rank_fid(f1, f2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mode", list(PROTOCOLS))
def test_channels_last_changes_the_scores_in_round_off_only(mode, folder_stats):
    """eval.channels_last (the default) runs other kernels than clean-fid's layout, whose
    features the test above shows are clean-fid's bit for bit: every feature within 1e-5 of
    the largest (measured: 6e-7), and FID and sFID within 1e-6 relative."""
    exact, fast = folder_stats(mode, channels_last=False), folder_stats(mode, channels_last=True)
    for ours, theirs in zip(fast, exact, strict=True):
        for kind in ("kept_pool", "kept_spatial", "all_logits"):
            a, b = getattr(ours, kind)(), getattr(theirs, kind)()
            assert not np.array_equal(a, b)  # other kernels indeed ...
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()  # ... round-off apart
    for kind in ("kept_pool", "kept_spatial"):
        fid = low_rank_fid(*(getattr(s, kind)() for s in fast))
        assert fid == pytest.approx(low_rank_fid(*(getattr(s, kind)() for s in exact)), rel=1e-6)


def test_a_cpu_batch_runs_in_calls_of_cpu_chunk_images_with_the_features_of_one_call(
    evaluators, monkeypatch
):
    """InceptionEvaluator.cpu_chunk (4) splits a batch of 6 into network calls of 4 and 2;
    each image's pool and spatial features are bit for bit those of one call over the 6 (the
    default layout), its logits (pool times a matrix, a product whose blocking follows the
    row count) equal to round-off (measured: 9e-7 of 0.4)."""
    evaluator = evaluators["legacy_tensorflow"]
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(5))
    images = images.to(torch.uint8)
    calls: list[int] = []
    network_call = type(evaluator)._features

    def counted(self, inputs):
        calls.append(len(inputs))
        return network_call(self, inputs)

    monkeypatch.setattr(type(evaluator), "_features", counted)
    monkeypatch.setattr(evaluator, "channels_last", True)
    chunked = evaluator.features(images)
    assert calls == [4, 2]
    monkeypatch.setattr(evaluator, "cpu_chunk", None)
    whole = evaluator.features(images)
    assert calls == [4, 2, 6]
    assert torch.equal(chunked.pool, whole.pool)
    assert torch.equal(chunked.spatial, whole.spatial)
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=0, atol=1e-5)
    assert whole.logits.abs().max() > 0.1  # not vacuous


def test_torchscript_single_pass_reads_the_networks_own_layers(evaluators, hub):
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(3))
    images = images.to(torch.uint8)
    # legacy_tensorflow: the file's whole forward (its resize included), asked for IS's
    # probabilities without the output bias, as StyleGAN's and ADM's Inception Score.
    evaluator = evaluators["legacy_tensorflow"]
    base = torch.jit.load(str(hub / TORCHSCRIPT_FILE)).eval()
    features = evaluator.features(images)
    with torch.no_grad():
        probs = base(images.float(), no_output_bias=True)
        with_bias = base(images.float())
    torch.testing.assert_close(features.logits.softmax(1), probs, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(with_bias, probs)  # the bias is not in there
    # clean: mixed_6/conv is the named submodule, on the network's own input, NHWC, 7 channels.
    evaluator = evaluators["clean"]
    x = (cleanfid_inputs(images, "clean") - 128) / 128
    with torch.no_grad():
        for name, layer in base.layers.named_children():
            if name == "mixed_6":
                mixed_6 = layer.conv(x)
                break
            x = layer(x)
    assert mixed_6.shape == (2, 192, 17, 17)
    features = evaluator.features(images)
    expected = mixed_6[:, :7].permute(0, 2, 3, 1).reshape(2, 2023)
    torch.testing.assert_close(features.spatial, expected, rtol=0, atol=0)
    with torch.no_grad():
        logits = F.linear(features.pool, base.output.weight)
    torch.testing.assert_close(features.logits, logits)
    assert evaluator.dims == (2048, 2023, 1008)


def test_port_single_pass_reads_mixed_6d_branch1x1_and_logits_without_bias(evaluators, hub):
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(4))
    images = images.to(torch.uint8)
    state_dict = load_inception_weights(hub / weights.entry("inception").filename)
    net = _port_architecture().eval()
    net.load_state_dict(state_dict)
    captured = []
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, a, out: captured.append(out))
    x = cleanfid_inputs(images, "legacy_pytorch") / 255 * 2 - 1
    with torch.no_grad():
        net(x)
    features = evaluators["legacy_pytorch"].features(images)
    expected = captured[0][:, :7].permute(0, 2, 3, 1).reshape(2, 2023)
    torch.testing.assert_close(features.spatial, expected)
    torch.testing.assert_close(features.logits, features.pool @ state_dict["fc.weight"].T)
    with torch.no_grad():
        assert not torch.allclose(features.logits, net.fc(features.pool))


def test_a_torchscript_whose_forward_differs_from_its_layers_is_refused(tmp_path):
    class Other(_TorchScriptStandIn):
        def forward(
            self,
            img: torch.Tensor,
            return_features: bool = False,
            use_fp16: bool = False,
            no_output_bias: bool = False,
        ) -> torch.Tensor:
            # PyTorch's bilinear resize, not the file's TensorFlow-style one
            x = F.interpolate(img, size=[299, 299], mode="bilinear", align_corners=False)
            return self.layers((x - 128) / 128).reshape(-1, 2048)

    net = _port_architecture().eval()
    net.load_state_dict(random_inception_weights(5))
    torch.jit.script(Other(net)).save(str(tmp_path / TORCHSCRIPT_FILE))
    evaluator = inception_evaluator(
        "legacy_tensorflow", tmp_path / TORCHSCRIPT_FILE, device=torch.device("cpu")
    )
    images = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(7))
    with pytest.raises(BenchError, match="differ from clean-fid's legacy_tensorflow features"):
        evaluator.features(images.to(torch.uint8))


def test_grayscale_is_repeated_to_rgb(evaluators):
    gray = torch.randint(0, 256, (1, 1, 16, 16), generator=torch.Generator().manual_seed(6))
    gray = gray.to(torch.uint8)
    for evaluator in evaluators.values():
        torch.testing.assert_close(
            evaluator.features(gray).pool, evaluator.features(gray.expand(-1, 3, -1, -1)).pool
        )


def test_protocol_is_in_name_label_and_config(hub, tmp_path):
    evaluator = build_evaluator(
        EvalConfig(evaluator="inception", protocol="clean"), DataConfig(), device="cpu",
        cache_dir=tmp_path,
    )  # fmt: skip
    assert (evaluator.protocol, evaluator.name) == ("clean", "inception:clean")
    assert score_label("sfid", evaluator) == "sFID (Inception/clean)"
    with pytest.raises(ConfigError, match="protocol"):
        EvalConfig(protocol="tensorflow")
    # The protocol is the inception evaluator's option: the classifier takes none (a study
    # that sets it where no cell uses inception is refused, tests/test_study.py).
    assert not hasattr(EvalConfig(evaluator="classifier", protocol="clean"), "protocol")


def test_the_default_protocol_is_legacy_tensorflow(hub, tmp_path):
    evaluator = build_evaluator(
        EvalConfig(evaluator="inception"), DataConfig(), device="cpu", cache_dir=tmp_path
    )
    assert evaluator.protocol == "legacy_tensorflow"


def test_a_weights_file_with_the_wrong_hash_is_refused(hub, tmp_path):
    # `hub` holds random weights under the port's name: their SHA-256 is not 6726825d...
    with pytest.raises(MissingWeightsError, match=r"corrupt.*bench weights fetch inception"):
        build_evaluator(
            EvalConfig(evaluator="inception", protocol="legacy_pytorch"),
            DataConfig(),
            device="cpu",
            cache_dir=tmp_path,
        )


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_missing_weights_offline_give_one_actionable_error(protocol, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, CLOSED_PROXY)
    with pytest.raises(MissingWeightsError) as err:
        build_evaluator(
            EvalConfig(evaluator="inception", protocol=protocol),
            DataConfig(),
            device="cpu",
            cache_dir=tmp_path,
        )
    message = str(err.value)
    entry = weights.entry(PROTOCOLS[protocol].weights)
    for needed in (entry.filename, entry.url, str(weights.hub_dir()), "bench weights fetch"):
        assert needed in message
    assert "--set eval.random_weights=true" in message
    assert not any(weights.hub_dir().glob("*"))  # no partial file left behind


def test_random_weights_only_on_request_and_named_in_every_label(tmp_path):
    evaluator = build_evaluator(
        EvalConfig(evaluator="inception", random_weights=True, protocol="legacy_pytorch"),
        DataConfig(),
        device="cpu",
        cache_dir=tmp_path,
    )
    assert evaluator.random_weights
    assert evaluator.label == "Inception/legacy_pytorch (random weights)"
    assert score_label("fid", evaluator) == "FID (Inception/legacy_pytorch, random weights)"


def test_a_state_dict_with_other_keys_is_refused():
    with pytest.raises(MissingWeightsError, match="does not fit the FID Inception"):
        cleanfid_port({"fc.weight": torch.zeros(1008, 2048)})


def test_unreadable_weights_files_are_refused(hub, tmp_path):
    broken = tmp_path / weights.entry("inception").filename
    broken.write_bytes((hub / broken.name).read_bytes()[:1000])
    with pytest.raises(MissingWeightsError, match=r"not a readable Inception state dict"):
        load_inception_weights(broken)
    (tmp_path / TORCHSCRIPT_FILE).write_bytes(b"not a TorchScript archive")
    with pytest.raises(MissingWeightsError, match="not a loadable TorchScript Inception"):
        inception_evaluator("clean", tmp_path / TORCHSCRIPT_FILE, device=torch.device("cpu"))
