"""The inception evaluator against clean-fid itself, with random weights in the official file.

The real weights cannot be downloaded here, so a seeded random state dict is saved under the
official file name in a temporary torch hub folder; clean-fid's own `InceptionV3` (its legacy
PyTorch path, which loads that file through torch hub) and our loader both read it.
Inception at 299x299 is slow on a CPU: a handful of images only.
"""

import numpy as np
import pytest
import torch
from cleanfid.inception_pytorch import InceptionV3
from cleanfid.resize import make_resizer

from bench.config import EvalConfig
from bench.evaluation import build_evaluator, metric_label
from bench.evaluation.inception import (
    InceptionEvaluator,
    inception_network,
    load_inception_weights,
    random_inception_weights,
)
from bench.evaluation.resize import clean_resize
from casdm import weights
from casdm.config import DataConfig
from casdm.errors import MissingWeightsError

CLOSED_PROXY = "http://127.0.0.1:9"  # nothing listens: a download is refused at once


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """TORCH_HOME holding random weights (with a non-zero fc bias) under the official name."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        state_dict = random_inception_weights(seed=1)
        state_dict["fc.bias"] = torch.linspace(-1, 1, 1008)  # so "without the bias" is tested
        path = weights.weights_path("inception")
        path.parent.mkdir(parents=True)
        torch.save(state_dict, path)
        yield path


@pytest.fixture(scope="module")
def evaluator(hub):
    """Ours, through the loading code build_evaluator uses once the hash has been checked."""
    return InceptionEvaluator(
        load_inception_weights(hub), weights_hash=weights.sha256(hub), device=torch.device("cpu")
    )


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, 32, 32), generator=generator).to(torch.uint8)


@pytest.fixture(scope="module")
def features16(evaluator, images):
    return evaluator.features(images)


def cleanfid_resize(images: torch.Tensor) -> torch.Tensor:
    """clean-fid's clean resizer, image by image: float [B, 3, 299, 299] in [0, 255]."""
    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    out = [resize(im.permute(1, 2, 0).numpy()).transpose(2, 0, 1) for im in images]
    return torch.from_numpy(np.stack(out))


def test_resize_equals_cleanfids_clean_resize():
    generator = torch.Generator().manual_seed(1)
    for height, width in [(32, 32), (8, 8), (20, 12), (299, 299)]:
        images = torch.randint(0, 256, (2, 3, height, width), generator=generator).to(torch.uint8)
        ours = clean_resize(images.float())
        torch.testing.assert_close(ours, cleanfid_resize(images), rtol=0, atol=1e-4)


def test_pool3_features_equal_cleanfids_legacy_pytorch_inception(hub, features16, images):
    net = InceptionV3(output_blocks=[3], resize_input=False).eval()  # reads `hub` via torch hub
    with torch.no_grad():
        # cleanfid.features.feature_extractor("pytorch_inception"): model(x / 255)[0]
        theirs = net(cleanfid_resize(images[:4]) / 255)[0].squeeze(-1).squeeze(-1)
    assert theirs.abs().max() > 0.1  # random weights that still give non-trivial features
    torch.testing.assert_close(features16.pool[:4], theirs, rtol=1e-5, atol=1e-5)


def test_features_do_not_depend_on_batch_size(evaluator, features16, images):
    one_by_one = [evaluator.features(image[None]) for image in images]
    for kind, batched in zip(features16._fields, features16, strict=True):
        single = torch.cat([getattr(f, kind) for f in one_by_one])
        # Features are O(1); convolution kernels pick their blocking by batch size, so sums
        # may be ordered differently: equal up to float32 rounding, nothing batch-dependent.
        torch.testing.assert_close(single, batched, rtol=1e-5, atol=2e-5, msg=kind)


def test_spatial_is_mixed_6d_branch1x1_nhwc_and_logits_have_no_bias(evaluator, images):
    captured = []
    handle = evaluator.network.Mixed_6d.branch1x1.register_forward_hook(
        lambda module, args, out: captured.append(out)
    )
    try:
        features = evaluator.features(images[:2])
    finally:
        handle.remove()
    mixed_6 = captured[-1]  # [2, 192, 17, 17]
    assert mixed_6.shape == (2, 192, 17, 17)
    expected = mixed_6[:, :7].permute(0, 2, 3, 1).reshape(2, 2023)
    torch.testing.assert_close(features.spatial, expected)
    assert evaluator.dims == (2048, 2023, 1008)
    fc = evaluator.network.fc
    torch.testing.assert_close(features.logits, features.pool @ fc.weight.T)
    assert not torch.allclose(features.logits, fc(features.pool))  # the bias is not in there


def test_grayscale_is_repeated_to_rgb(evaluator, images):
    gray = images[:1, :1]
    torch.testing.assert_close(
        evaluator.features(gray).pool, evaluator.features(gray.expand(-1, 3, -1, -1)).pool
    )


def test_a_weights_file_with_the_wrong_hash_is_refused(hub):
    # `hub` holds random weights under the official name: their SHA-256 is not 6726825d...
    with pytest.raises(MissingWeightsError, match=r"corrupt.*bench weights fetch inception"):
        build_evaluator(
            EvalConfig(evaluator="inception"), DataConfig(), device="cpu", cache_dir=hub.parent
        )


def test_missing_weights_offline_give_one_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, CLOSED_PROXY)
    with pytest.raises(MissingWeightsError) as err:
        build_evaluator(
            EvalConfig(evaluator="inception"), DataConfig(), device="cpu", cache_dir=tmp_path
        )
    message = str(err.value)
    entry = weights.entry("inception")
    for needed in (entry.filename, entry.url, str(weights.hub_dir()), "bench weights fetch"):
        assert needed in message
    assert "--set eval.random_weights=true" in message
    assert not any(weights.hub_dir().glob("*"))  # no partial file left behind


def test_random_weights_only_on_request_and_named_in_every_label(tmp_path):
    evaluator = build_evaluator(
        EvalConfig(evaluator="inception", random_weights=True),
        DataConfig(),
        device="cpu",
        cache_dir=tmp_path,
    )
    assert evaluator.random_weights
    assert evaluator.label == "Inception (random weights)"
    assert metric_label("fid", evaluator) == "FID (Inception, random weights)"
    assert metric_label("is_mean", evaluator) == "IS (Inception, random weights)"


def test_a_state_dict_with_other_keys_is_refused():
    with pytest.raises(MissingWeightsError, match="does not fit the FID Inception"):
        inception_network({"fc.weight": torch.zeros(1008, 2048)})


def test_a_truncated_weights_file_is_refused(hub, tmp_path):
    broken = tmp_path / hub.name
    broken.write_bytes(hub.read_bytes()[:1000])
    with pytest.raises(MissingWeightsError, match=r"not a readable Inception state dict"):
        load_inception_weights(broken)
