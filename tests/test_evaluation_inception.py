"""The inception evaluator's protocols against clean-fid's own compute_fid / compute_kid.

The real weights cannot be downloaded here, so stand-ins are built locally and saved under the
official file names in a temporary torch hub folder: a seeded random state dict for the
pytorch-fid port (which clean-fid's legacy_pytorch `InceptionV3` loads through torch hub) and a
seeded random TorchScript module with the interface of inception-2015-12-05.pt (which clean-fid's
`InceptionV3W` loads by path). Our evaluators and clean-fid read the same files. The TorchScript
stand-in (tests/inception_standin.py) is written from the file's published forward, its own
TensorFlow-style resize included, and shares no code with our emulation of that resize: what
is compared against it is not compared with itself. Inception at 299x299 is slow on a CPU: a
handful of images only.
"""

import math

import cleanfid.features
import cleanfid.fid
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import build_resizer
from inception_standin import InceptionStandIn, inception_standin, seeded
from PIL import Image
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import build_evaluator, score_label
from bench.evaluation.formulas import KID_SEED, kernel_inception_distance
from bench.evaluation.inception import (
    PROTOCOLS,
    TORCHSCRIPT_FILE,
    _port_architecture,
    cleanfid_inputs,
    cleanfid_port,
    inception_evaluator,
    load_inception_weights,
    random_inception_weights,
)
from bench.evaluation.stream import FeatureStats, batches, collect
from casdm import weights
from casdm.config import ConfigError, DataConfig
from casdm.data import read_images
from casdm.errors import MissingWeightsError

CLOSED_PROXY = "http://127.0.0.1:9"  # nothing listens: a download is refused at once
IMAGES = 5  # per folder: a batch of BATCH, then a batch of one
BATCH = 4

# Tolerances, derived from the arithmetic. U is float32's unit round-off, EPS float64's machine
# epsilon. Rounding errors are modelled as independent (Higham & Mary 2019): a sum of K terms
# added in another order moves by about U sqrt(K) of its size, and the largest of up to ~1e5
# such errors stays within 5 times that.
U = 2.0**-24
EPS = float(np.finfo(np.float64).eps)
# Terms summed along the longest path through the FID Inception (over its layers, the K =
# in-channels x kernel height x kernel width products of each output): the stem 1,387, the
# blocks' longest branches 1,632 + 1,696 + 1,728 (A), 2,592 (B), 4,352 + 5,248 + 5,248 + 6,144
# (C), 5,184 (D), 6,464 + 7,232 (E), the 8x8 average pool 64: 48,971 to pool3. To mixed_6/conv
# (the stem, mixed to mixed_5, then its 1x1 over 768 channels) 19,403; the logits 2,048 more.
POOL_TERMS, SPATIAL_TERMS, LOGIT_TERMS = 48_971, 19_403, 48_971 + 2_048


def roundoff(reference, terms: int) -> float:
    """How far float32 outputs may move from `reference` when other kernels (another layout,
    another batch size) sum the same products in other orders: each of the path's sums adds
    about U sqrt(K) of the output's scale (its RMS; the He-initialised layers have unit gain),
    so the path adds U sqrt(`terms`), and the largest of the outputs stays within 5 of that.
    Measured: 1/50 to 1/5 of it."""
    reference = torch.as_tensor(np.asarray(reference)).double()
    return 5 * U * math.sqrt(terms) * reference.pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """TORCH_HOME holding both stand-ins under the official names (output biases non-zero): the
    TorchScript one is tests/inception_standin.py's, independent of bench's code."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        weights.hub_dir().mkdir(parents=True)
        torch.save(random_inception_weights(seed=1), weights.weights_path("inception"))
        inception_standin(seed=2).save(str(weights.weights_path("inception_torchscript")))
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
    # ... because the features themselves are clean-fid's, bit for bit (both folders, as
    # compute_fid extracted them with its own feature extractor).
    theirs = list(cleanfid_features_once.values())
    assert len(theirs) == 2
    for ours, their in zip(features, theirs, strict=True):
        assert np.array_equal(ours, their)
    assert np.abs(theirs).max() > 0.1  # random weights that still give non-trivial features
    # KID: clean-fid's kernel_distance on the same features with the same subsets (the same
    # seed): the same operations on the same numbers, so the same float.
    assert kid == their_kid
    # FID from the same features: clean-fid's mean is float32 (np.mean of float32 features
    # adds the n rows one by one: each mean within U ((n - 1) mean|x| + |mean|) of the exact
    # one), ours float64; the covariances are float64 on both sides (within ~EPS sqrt(n) of each
    # other). With b the two means' error bounds summed and d = mu1 - mu2, |d|^2 moves by
    # 2 <d, delta> + |delta|^2, the sum <d, delta> of D independent errors within 5
    # sqrt(sum (d b)^2); the float64 terms add EPS sqrt(D^2) (the largest sum, sum S1 * S2) of
    # their size. Measured: 1/800 to 1/25 of it.
    b = sum(U * ((IMAGES - 1) * np.abs(f).mean(0) + np.abs(f.mean(0))) for f in theirs)
    (s1, s2) = folder_stats(mode, channels_last=False)
    d = s1.pool.mean() - s2.pool.mean()
    float64_terms = cheap_frechet(
        s1.pool.mean(), np.abs(s1.pool.cov()), s2.pool.mean(), np.abs(s2.pool.cov())
    )
    tolerance = 10 * np.sqrt(((d * b) ** 2).sum()) + b @ b + EPS * len(d) * float64_terms
    assert abs(fid - their_fid) <= tolerance


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
    # float64 on both sides. scipy's sqrtm of S1 S2 (similar to a symmetric matrix through
    # S2^1/2, of condition kappa = cond(S2)^1/2) moves each eigenvalue lambda by <= kappa EPS
    # |S1 S2| (LAPACK's approximate eigenvalue bound), so its root by that / (2 sqrt(lambda)).
    # The SVD moves the singular values of M = A1 A2^T, in all, by <= its 50 of EPS |M| plus
    # sqrt(rank) |dM| for M's own rounding, |dM| <= sqrt(D) EPS |A1| |A2| (Frobenius); over
    # sqrt(c1 c2), |M| is |S1 S2|^1/2 and |A1| |A2| is (Tr S1 Tr S2)^1/2. The means and traces
    # sum <= 60 x 12 terms on each side (sqrt(720) EPS of each term). Measured: 1/70 of it.
    (mu1, s1), (mu2, s2) = stats
    eigenvalues, s2_eigenvalues = np.linalg.eigvals(s1 @ s2).real, np.linalg.eigvalsh(s2)
    kappa = math.sqrt(s2_eigenvalues[-1] / s2_eigenvalues[0])
    norm = np.linalg.norm(s1 @ s2, 2)
    sqrtm_error = (kappa * EPS * norm / (2 * np.sqrt(eigenvalues))).sum()
    svd_error = EPS * (
        50 * math.sqrt(norm) + math.sqrt(50 * 12) * math.sqrt(np.trace(s1) * np.trace(s2))
    )
    sums = math.sqrt(60 * 12) * EPS * ((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2))
    tolerance = 2 * (sqrtm_error + svd_error + sums)
    assert low_rank_fid(f1, f2) == pytest.approx(expected, rel=0, abs=tolerance)


def fid_change_bound(exact: list[np.ndarray], moved: list[np.ndarray]) -> float:
    """The most low_rank_fid can change when the two sets' features move from `exact` to
    `moved` (a worst case: the change aligned with the features; measured 1/200 to 1/1000 of
    it). FID = |m1 - m2|^2 + a1^2 / c1 + a2^2 / c2 - 2 |A1 A2^T|_* / sqrt(c1 c2), A the centred
    features, a = |A| (Frobenius), c = n - 1. With e = |moved - exact| (centring is a
    projection: A moves by <= e, the mean by <= e / sqrt(n)), the terms move by at most
    2 |m1 - m2| de + de^2 (de = e1 / sqrt(n1) + e2 / sqrt(n2)), (2 a e + e^2) / c and
    2 (a1 e2 + e1 a2 + e1 e2) / sqrt(c1 c2) (|X Y^T|_* <= |X| |Y|); low_rank_fid's own float64
    sums add 4 EPS sqrt(n D) of the terms' size."""
    (f1, f2), (g1, g2) = ([f.astype(np.float64) for f in s] for s in (exact, moved))
    (n1, dim), n2 = f1.shape, len(f2)
    c1, c2 = n1 - 1, n2 - 1
    a1, a2 = (np.linalg.norm(f - f.mean(0)) for f in (f1, f2))
    e1, e2 = np.linalg.norm(g1 - f1), np.linalg.norm(g2 - f2)
    m = np.linalg.norm(f1.mean(0) - f2.mean(0))
    de = e1 / math.sqrt(n1) + e2 / math.sqrt(n2)
    change = 2 * m * de + de**2 + (2 * a1 * e1 + e1**2) / c1 + (2 * a2 * e2 + e2**2) / c2
    change += 2 * (a1 * e2 + e1 * a2 + e1 * e2) / math.sqrt(c1 * c2)
    size = m**2 + a1**2 / c1 + a2**2 / c2 + 2 * a1 * a2 / math.sqrt(c1 * c2)
    return change + 4 * EPS * math.sqrt(n1 * dim) * size


@pytest.mark.parametrize("mode", list(PROTOCOLS))
def test_channels_last_changes_the_scores_in_round_off_only(mode, folder_stats):
    """eval.channels_last (the default) runs other kernels than clean-fid's layout, whose
    features the test above shows are clean-fid's bit for bit: every feature within the
    round-off of the network's sums (`roundoff`: 1.1e-5 to 2e-5 of the largest feature here,
    measured 4e-7 to 3e-6), and FID and sFID within what that moves them (`fid_change_bound`:
    FID is a difference of terms larger than itself, so its relative change is larger than the
    features'; a bare relative 1e-6 failed on other CPUs)."""
    exact, fast = folder_stats(mode, channels_last=False), folder_stats(mode, channels_last=True)
    terms = {"kept_pool": POOL_TERMS, "kept_spatial": SPATIAL_TERMS, "all_logits": LOGIT_TERMS}
    for ours, theirs in zip(fast, exact, strict=True):
        for kind, path in terms.items():
            a, b = getattr(ours, kind)(), getattr(theirs, kind)()
            # Other kernels on most CPUs (equal bits are allowed: a CPU may pick the same ones),
            # never more than round-off apart.
            assert np.abs(a - b).max() <= roundoff(b, path)
    for kind in ("kept_pool", "kept_spatial"):
        features = [[getattr(s, kind)() for s in stats] for stats in (exact, fast)]
        change = abs(low_rank_fid(*features[1]) - low_rank_fid(*features[0]))
        assert change <= fid_change_bound(*features)


def test_a_cpu_batch_runs_in_calls_of_cpu_chunk_images_with_the_features_of_one_call(
    evaluators, monkeypatch
):
    """InceptionEvaluator.cpu_chunk (4) splits a batch of 6 into network calls of 4 and 2;
    each image's pool and spatial features are bit for bit those of one call over the 6 (the
    default layout), its logits (pool times a matrix, a product whose blocking follows the
    row count) equal to the round-off of that one sum of 2,048 products (`roundoff`: 6e-6;
    measured: 9e-7)."""
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
    torch.testing.assert_close(
        chunked.logits, whole.logits, rtol=0, atol=roundoff(whole.logits, 2048)
    )
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
    # Our logits are F.linear of the forward's own features, as its no-bias probabilities
    # are: within `roundoff` of one 2,048-term sum (L) if the kernels sum in another order.
    # log p = z - logsumexp(z) then moves by <= 2 L, p by 2 L relative; the two softmaxes'
    # own rounding (exp, the 1,008-term sum, the division) is (2 + sqrt(1008)) U on each side.
    logit_roundoff = roundoff(features.logits, 2048)
    softmax_rtol = 2 * logit_roundoff + 2 * (2 + math.sqrt(1008)) * U
    torch.testing.assert_close(features.logits.softmax(1), probs, rtol=softmax_rtol, atol=0)
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
    # The same product of the same numbers; `roundoff` of its 2,048-term sums, should a kernel
    # sum them in another order.
    torch.testing.assert_close(features.logits, logits, rtol=0, atol=roundoff(logits, 2048))
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
    # The same network on the same inputs, in another module tree: the same numbers, or, should
    # a kernel be chosen otherwise, within the round-off of the sums on the way (`roundoff`).
    spatial_roundoff = roundoff(expected, SPATIAL_TERMS)
    torch.testing.assert_close(features.spatial, expected, rtol=0, atol=spatial_roundoff)
    logits = features.pool @ state_dict["fc.weight"].T
    torch.testing.assert_close(features.logits, logits, rtol=0, atol=roundoff(logits, 2048))
    with torch.no_grad():
        assert not torch.allclose(features.logits, net.fc(features.pool))


# (height, width): square sizes of the datasets and tests, and 40x17 (width x height), non-square.
SIZES = [(8, 8), (28, 28), (32, 32), (64, 64), (17, 40)]
SIZE_IDS = [f"{width}x{height}" for height, width in SIZES]
# The resize alone is cheap: 17x40 too, the same size transposed.
RESIZE_SIZES, RESIZE_IDS = [*SIZES, (40, 17)], [*SIZE_IDS, "17x40"]


def pixels(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random integer pixel values in [0, 255], as float32 (clean-fid's legacy_tensorflow
    inputs: the images themselves, ToTensor() times 255)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator).float()


def checkerboard(height: int, width: int) -> torch.Tensor:
    """0/255 alternating pixels: every neighbour differs by 255, the largest pixel gradient."""
    board = (torch.arange(height)[:, None] + torch.arange(width)[None]) % 2 * 255.0
    return board.expand(1, 3, height, width).contiguous()


@pytest.fixture(scope="module")
def standin(hub):
    """The hub's TorchScript stand-in, loaded as clean-fid's InceptionV3W loads it."""
    return torch.jit.load(str(hub / TORCHSCRIPT_FILE)).eval()


@pytest.mark.parametrize(("height", "width"), RESIZE_SIZES, ids=RESIZE_IDS)
def test_the_resize_emulation_is_the_torchscript_forwards_resize_bit_for_bit(
    height, width, evaluators, standin, monkeypatch
):
    """TorchScriptInception._network_input (legacy_tensorflow) against the resize in the
    stand-in's forward, written independently from the file's code: the same aten operations on
    the same values, so the same bits, in either layout of the network's input."""
    evaluator = evaluators["legacy_tensorflow"]
    x = torch.cat(
        [pixels((3, 3, height, width), seed=height * 100 + width), checkerboard(height, width)]
    )
    with torch.no_grad():
        theirs = standin.network_input(x)
    assert theirs.shape == (4, 3, 299, 299)
    assert torch.equal(evaluator._network_input(x), theirs)
    monkeypatch.setattr(evaluator, "channels_last", True)
    assert torch.equal(
        evaluator._network_input(x.contiguous(memory_format=torch.channels_last)), theirs
    )


@pytest.mark.parametrize(("height", "width"), RESIZE_SIZES, ids=RESIZE_IDS)
def test_the_resize_emulation_is_tensorflow_1x_bilinear_resize_as_torch_fidelity_writes_it(
    height, width, evaluators
):
    """A second, fully independent reference: torch-fidelity's TF1.x bilinear resize
    (align_corners=False), which samples output pixel j at source coordinate j * w / 299,
    clamped to the last pixel: the mapping the affine grid's translation makes
    ((2j + 1) / 299 - 1 + 1 / w - 1 / 299 + 1) * w / 2 - 1 / 2 = j * w / 299.

    The two compute that coordinate with different float32 operations (U = 2^-24 the unit
    round-off). Ours: the grid's x in [-1, 1] carries ~7 roundings of U (linspace 2,
    * 298 / 299 2, the bmm with theta 2, theta's translation 1); grid_sample scales it by w / 2
    and rounds once more at magnitude w: |error| <= 4.5 w U pixels. torch-fidelity's
    j * fl(w / 299): <= 2 w U. So the coordinates differ by <= 6.5 w U (x) and 6.5 h U (y), and
    a bilinear sample, Lipschitz with the largest neighbour difference (255), by
    <= 255 * 6.5 (w + h) U; the two interpolation formulas (4 weighted terms vs 3 lerps) add
    <= 10 * 255 U of round-off, the scaling (v - 128) / 128 one rounding of <= 128 U on each
    side (the division by 128 is exact). Measured: 1/7 to 1/5 of this bound (1.0-1.4
    * 255 (w + h) U, the checkerboard the largest); a resize half a pixel off is 1e-1 away."""
    evaluator = evaluators["legacy_tensorflow"]
    tolerance = (255 * (6.5 * (width + height) + 10) + 2 * 128) * U / 128
    for x in (
        pixels((3, 3, height, width), seed=height * 100 + width),
        checkerboard(height, width),
    ):
        tensorflow = interpolate_bilinear_2d_like_tensorflow1x(
            x, size=(299, 299), align_corners=False
        )
        ours = evaluator._network_input(x)
        torch.testing.assert_close(ours, (tensorflow - 128) / 128, rtol=0, atol=tolerance)
    # Not vacuous: PyTorch's own bilinear resize (its coordinate (j + 1/2) w / 299 - 1/2) is not
    # TensorFlow's, and differs from it by far more than the tolerance.
    pytorch = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    assert (ours - (pytorch - 128) / 128).abs().max() > 100 * tolerance


@pytest.mark.parametrize(("height", "width"), SIZES, ids=SIZE_IDS)
def test_one_pass_features_are_the_torchscript_forwards_at_every_size(
    height, width, evaluators, standin
):
    """Pool features (FID's) of our one-pass evaluators against the stand-in itself, bit for
    bit: legacy_tensorflow against its whole forward (resize inside), clean against its
    `layers` on clean-fid's PIL-bicubic 299x299 inputs scaled (x - 128) / 128, as clean-fid's
    InceptionV3W calls them. The inputs are made here with clean-fid's resizer, not bench's."""
    images = pixels((1, 3, height, width), seed=height * 100 + width + 1).to(torch.uint8)
    with torch.no_grad():
        tensorflow = standin(images.float(), return_features=True)
        resized = build_resizer("clean")(images[0].permute(1, 2, 0).numpy())
        x = torch.from_numpy(resized).permute(2, 0, 1)[None]
        clean = standin.layers((x - 128) / 128).reshape(-1, 2048)
    assert torch.equal(evaluators["legacy_tensorflow"].features(images).pool, tensorflow)
    assert torch.equal(evaluators["clean"].features(images).pool, clean)
    assert tensorflow.abs().max() > 0.1 and not torch.equal(tensorflow, clean)


def test_a_torchscript_whose_forward_differs_from_its_layers_is_refused(tmp_path):
    class Other(InceptionStandIn):
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

    torch.jit.script(seeded(Other(), 5).eval()).save(str(tmp_path / TORCHSCRIPT_FILE))
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
        # The same inputs once repeated to RGB: the same pool features, or, should a kernel be
        # chosen otherwise, within the round-off of the network's sums (`roundoff`).
        rgb = evaluator.features(gray.expand(-1, 3, -1, -1)).pool
        pool_roundoff = roundoff(rgb, POOL_TERMS)
        torch.testing.assert_close(evaluator.features(gray).pool, rgb, rtol=0, atol=pool_roundoff)


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
