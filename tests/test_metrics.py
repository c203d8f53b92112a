"""Metric losses: per-sample values against independent references, frozen LPIPS, bad inputs."""

import lpips
import pytest
import torch
import torch.nn.functional as F

from casdm.config import MetricConfig
from casdm.errors import InputError
from casdm.metrics import METRICS, build_metric
from casdm.registry import UnknownNameError


def random_lpips(net: str = "squeeze", min_size: int = 32, weight: float = 1.0):
    return build_metric(
        MetricConfig(name="lpips", net=net, trunk="random", min_size=min_size, weight=weight)
    )


def images(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def test_registry_names():
    assert set(METRICS) == {"none", "l2", "lpips"}


def test_unknown_metric_lists_valid_names():
    with pytest.raises(
        UnknownNameError, match="unknown metric 'ssim'; valid metrics: l2, lpips, none"
    ):
        build_metric(MetricConfig(name="ssim"))


def test_l2_is_per_sample_mean_squared_error():
    x0_pred, x0 = images(3, 2, 4, 4, seed=1), images(3, 2, 4, 4, seed=2)
    value = build_metric(MetricConfig(name="l2", weight=0.5))(x0_pred, x0)
    expected = torch.stack([F.mse_loss(x0_pred[i], x0[i]) for i in range(3)])
    assert value.shape == (3,)
    torch.testing.assert_close(value, expected)


def test_none_is_inactive_and_zero():
    metric = build_metric(MetricConfig(name="none"))
    assert not metric.active
    assert torch.equal(metric(images(2, 1, 4, 4), images(2, 1, 4, 4)), torch.zeros(2))


def test_zero_weight_makes_a_metric_inactive():
    assert not build_metric(MetricConfig(name="l2", weight=0.0)).active
    assert build_metric(MetricConfig(name="l2", weight=0.1)).active


def test_labels_name_a_random_trunk():
    assert build_metric(MetricConfig(name="l2")).label == "l2"
    assert random_lpips("squeeze").label == "lpips-squeeze(random-trunk)"
    assert random_lpips("squeeze").weight == 1.0


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_lpips_matches_the_package_on_mapped_inputs(net):
    """8x8 grayscale -> 3 channels, bilinear to 32x32, then lpips.LPIPS itself."""
    torch.manual_seed(0)
    metric = random_lpips(net, min_size=32)
    torch.manual_seed(0)
    reference = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    for (name, ours), theirs in zip(
        metric.lpips.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    x0_pred, x0 = images(2, 1, 8, 8, seed=3), images(2, 1, 8, 8, seed=4)

    def mapped(x):
        return F.interpolate(
            x.repeat(1, 3, 1, 1), size=(32, 32), mode="bilinear", align_corners=False
        )

    expected = reference(mapped(x0_pred), mapped(x0)).flatten()
    value = metric(x0_pred, x0)
    assert value.shape == (2,)
    torch.testing.assert_close(value, expected)
    assert bool((value > 0).all())
    torch.testing.assert_close(metric(x0, x0), torch.zeros(2), atol=1e-6, rtol=0)


def test_lpips_leaves_large_enough_images_alone():
    metric = random_lpips("squeeze", min_size=16)
    x0_pred, x0 = images(2, 3, 24, 24, seed=5), images(2, 3, 24, 24, seed=6)
    torch.testing.assert_close(metric(x0_pred, x0), metric.lpips(x0_pred, x0).flatten())


def test_lpips_is_frozen_and_stays_in_eval_mode():
    metric = random_lpips("squeeze")
    assert not any(p.requires_grad for p in metric.parameters())
    metric.train()
    assert not metric.training
    assert not any(m.training for m in metric.modules())
    parent = torch.nn.ModuleDict({"metric": metric})
    parent.train()
    assert not any(m.training for m in metric.modules())


def test_lpips_passes_gradient_to_the_prediction_only():
    metric = random_lpips("squeeze")
    x0_pred = images(2, 3, 8, 8, seed=7).requires_grad_()
    metric(x0_pred, images(2, 3, 8, 8, seed=8)).sum().backward()
    assert x0_pred.grad is not None and x0_pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())


@pytest.mark.parametrize(("net", "need"), [("alex", 31), ("squeeze", 17)])
def test_lpips_too_small_without_upsampling_names_the_fix(net, need):
    metric = random_lpips(net, min_size=0)
    with pytest.raises(
        InputError, match=f"at least {need}x{need}, got 16x16.*metric.min_size >= {need}"
    ):
        metric(images(1, 3, 16, 16), images(1, 3, 16, 16))


def test_build_metric_checks_the_image_shape_up_front():
    cfg = MetricConfig(name="lpips", net="squeeze", trunk="random", min_size=0)
    with pytest.raises(InputError, match="at least 17x17, got 8x8"):
        build_metric(cfg, image_shape=(3, 8, 8))
    with pytest.raises(InputError, match="1-channel or RGB images, got 4 channels"):
        build_metric(
            MetricConfig(name="lpips", net="squeeze", trunk="random"), image_shape=(4, 32, 32)
        )
    assert build_metric(MetricConfig(name="l2"), image_shape=(4, 8, 8)).active
