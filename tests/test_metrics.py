"""Metric losses: per-sample values against their libraries and the papers' formulas, frozen
LPIPS, gradient flow in every architecture, and the messages for images a metric cannot take."""

import math

import lpips
import pytest
import pytorch_msssim
import scipy.special
import torch
import torch.nn.functional as F

from casdm.architectures import build_model
from casdm.components import registry
from casdm.config import ArchitectureConfig, ConfigError, MetricConfig, ModelConfig, from_dict
from casdm.errors import InputError
from casdm.metrics import build_metric
from casdm.schedule import Schedule

METRICS = registry("metric").names()
U = 2.0**-24  # float32's unit round-off


def mean_rtol(terms: int) -> float:
    """Two float32 means of the same `terms` values, reduced in other orders (torch's cascade
    summation: about log2(K) roundings of U), then divided: (log2(K) + 2) U relative."""
    return (math.log2(terms) + 2) * U


def caption_note(cfg, height, width):
    return cfg.component.caption_note(cfg.options, height, width)


def random_lpips(net: str = "squeeze", min_size: int = 32, weight: float = 1.0):
    return build_metric(
        MetricConfig(name="lpips", net=net, trunk="random", min_size=min_size, weight=weight)
    )


def images(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def test_registry_names():
    assert set(METRICS) == {"none", "l2", "l1", "pseudo-huber", "ssim", "ms-ssim", "lpips"}


def test_unknown_metric_lists_valid_names():
    with pytest.raises(
        ConfigError,
        match="name: unknown metric 'dists'; valid metrics: l1, l2, lpips, ms-ssim, none, "
        "pseudo-huber, ssim",
    ):
        MetricConfig(name="dists")


def test_l2_is_per_sample_mean_squared_error():
    x0_pred, x0 = images(3, 2, 4, 4, seed=1), images(3, 2, 4, 4, seed=2)
    value = build_metric(MetricConfig(name="l2", weight=0.5))(x0_pred, x0)
    expected = torch.stack([F.mse_loss(x0_pred[i], x0[i]) for i in range(3)])
    assert value.shape == (3,)
    torch.testing.assert_close(value, expected, rtol=mean_rtol(2 * 4 * 4), atol=0)


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
    # The same network (equal weights) on the same mapped batch: the same operations, equal.
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    assert bool((value > 0).all())
    # Equal features on both sides: every difference, hence the distance, is exactly 0.
    assert torch.equal(metric(x0, x0), torch.zeros(2))


def test_lpips_leaves_large_enough_images_alone():
    metric = random_lpips("squeeze", min_size=16)
    x0_pred, x0 = images(2, 3, 24, 24, seed=5), images(2, 3, 24, 24, seed=6)
    # The same module on the same tensors: equal.
    assert torch.equal(metric(x0_pred, x0), metric.lpips(x0_pred, x0).flatten())


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
        InputError,
        match=f"at least {need}x{need} and the images are 16x16; set metric.min_size >= {need}",
    ):
        metric(images(1, 3, 16, 16), images(1, 3, 16, 16))


def test_build_metric_checks_the_image_shape_up_front():
    cfg = MetricConfig(name="lpips", net="squeeze", trunk="random", min_size=0)
    with pytest.raises(InputError, match="at least 17x17 and the images are 8x8"):
        build_metric(cfg, image_shape=(3, 8, 8))
    with pytest.raises(InputError, match="1-channel or RGB images, got 4 channels"):
        build_metric(
            MetricConfig(name="lpips", net="squeeze", trunk="random"), image_shape=(4, 32, 32)
        )
    assert build_metric(MetricConfig(name="l2"), image_shape=(4, 8, 8)).active


# --- pixel losses ---------------------------------------------------------------------------


def test_l1_is_per_sample_mean_absolute_error():
    x0_pred, x0 = images(3, 2, 4, 4, seed=9), images(3, 2, 4, 4, seed=10)
    value = build_metric(MetricConfig(name="l1"))(x0_pred, x0)
    expected = torch.stack([F.l1_loss(x0_pred[i], x0[i]) for i in range(3)])
    assert value.shape == (3,)
    torch.testing.assert_close(value, expected, rtol=mean_rtol(2 * 4 * 4), atol=0)


def assert_pseudo_huber_close(value, reference, dims, c):
    """Ours in float32 against the float64 reference: the K = dims squares summed by torch's
    cascade summation (log2(K) roundings of U), c^2 added, the root (relative
    (log2(K) + 3) U / 2 of sqrt(r^2 + c^2), take (log2(K) + 3) U) and c, rounded to float32
    (U c), subtracted: |error| <= (log2(K) + 3) U (value + c) + U c. Measured: 1/25 to 1/20
    of it."""
    rtol = (math.log2(dims) + 3) * U
    torch.testing.assert_close(value.double(), reference, rtol=rtol, atol=rtol * c + U * c)


def pseudo_huber_reference(x0_pred, x0, c):
    """Song & Dhariwal 2023: sqrt(||x - y||_2^2 + c^2) - c on each flattened image, computed as
    scipy's pseudo_huber(c, r) / c = c * (sqrt(1 + (r / c)^2) - 1) with r the L2 norm."""
    r = torch.linalg.vector_norm((x0_pred - x0).reshape(x0.shape[0], -1).double(), dim=1)
    return torch.from_numpy(scipy.special.pseudo_huber(c, r.numpy()) / c)


def test_pseudo_huber_follows_the_consistency_models_paper():
    x0_pred, x0 = images(3, 3, 32, 32, seed=11), images(3, 3, 32, 32, seed=12)
    x0_pred[2] = x0[2] + 1e-4  # an error norm (0.0055) well below c: the quadratic regime
    value = build_metric(MetricConfig(name="pseudo-huber"))(x0_pred, x0)
    c = 0.00054 * math.sqrt(3 * 32 * 32)
    assert round(c, 2) == 0.03  # the paper's c for CIFAR-10
    assert value.shape == (3,)
    assert_pseudo_huber_close(value, pseudo_huber_reference(x0_pred, x0, c), 3 * 32 * 32, c)
    assert value[2] < 1e-3 and value[0] > 1
    # sqrt(0 + c^2) - c: c^2 and its root each rounded to float32 (U / 2 of c each), c too.
    same = build_metric(MetricConfig(name="pseudo-huber"))(x0, x0)
    torch.testing.assert_close(same, torch.zeros(3), rtol=0, atol=2 * U * c)


def test_pseudo_huber_c_can_be_set_and_scales_with_the_image_size():
    x0_pred, x0 = images(2, 1, 8, 8, seed=13), images(2, 1, 8, 8, seed=14)
    default = build_metric(MetricConfig(name="pseudo-huber"))(x0_pred, x0)
    reference = pseudo_huber_reference(x0_pred, x0, 0.00054 * 8)
    assert_pseudo_huber_close(default, reference, 64, 0.00054 * 8)
    value = build_metric(MetricConfig(name="pseudo-huber", pseudo_huber_c=0.5))(x0_pred, x0)
    assert_pseudo_huber_close(value, pseudo_huber_reference(x0_pred, x0, 0.5), 64, 0.5)


# --- structural similarity --------------------------------------------------------------------


def unit(x):
    return (x + 1) / 2


@pytest.mark.parametrize(("win_size", "win_sigma"), [(3, 1.5), (5, 1.0), (11, 1.5)])
def test_ssim_is_one_minus_the_library_ssim_on_unit_range_images(win_size, win_sigma):
    x0_pred, x0 = images(3, 3, 16, 16, seed=15), images(3, 3, 16, 16, seed=16)
    x0_pred[1] = 0.8 * x0[1] + 0.1  # a close prediction: a high SSIM
    cfg = MetricConfig(name="ssim", win_size=win_size, win_sigma=win_sigma)
    value = build_metric(cfg, (3, 16, 16))(x0_pred, x0)
    expected = torch.stack(
        [
            1
            - pytorch_msssim.ssim(
                unit(x0_pred[i : i + 1]),
                unit(x0[i : i + 1]),
                data_range=1.0,
                win_size=win_size,
                win_sigma=win_sigma,
            )
            for i in range(3)
        ]
    )
    assert value.shape == (3,)
    # The library's ssim on the same images, as a batch of 3 here and one by one there: the
    # Gaussian filters (2 win-term sums per pixel) may be summed in other orders, ~10 more
    # operations per pixel follow, and sigma^2 = E[x^2] - mu^2 cancels about 3 times
    # (mu ~ 1/2, sigma^2 ~ 1/12) before the map's mean: 3 (sqrt(2 win) + 10) U. Measured: equal.
    ssim_roundoff = 3 * (math.sqrt(2 * win_size) + 10) * U
    torch.testing.assert_close(value, expected, rtol=0, atol=ssim_roundoff)
    assert value[1] < value[0] and value[1] < value[2]
    # The [0, 1] mapping matters: SSIM's luminance term is not shift-invariant.
    raw = 1 - pytorch_msssim.ssim(x0_pred, x0, data_range=2.0, size_average=False, win_size=3)
    assert not torch.allclose(value, raw) or win_size != 3
    # x against itself: sigma_xy is computed as sigma_x^2 is, 2 a = a + a exactly, so every
    # ratio of the map is 1 exactly, its mean too: 1 - SSIM is exactly 0.
    assert torch.equal(build_metric(cfg)(x0, x0), torch.zeros(3))


def test_ms_ssim_is_one_minus_the_library_ms_ssim_after_upsampling():
    x0_pred, x0 = images(2, 1, 8, 8, seed=17), images(2, 1, 8, 8, seed=18)
    cfg = MetricConfig(name="ms-ssim", win_size=3, min_size=40)
    value = build_metric(cfg, (1, 8, 8))(x0_pred, x0)

    def mapped(x):
        return F.interpolate(unit(x), size=(40, 40), mode="bilinear", align_corners=False)

    expected = 1 - pytorch_msssim.ms_ssim(
        mapped(x0_pred), mapped(x0), data_range=1.0, size_average=False, win_size=3
    )
    assert value.shape == (2,)
    # The library's ms_ssim on the same mapped batch: the same operations, equal.
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    assert caption_note(cfg, 8, 8) == "ms-ssim on images upsampled bilinearly from 8x8 to 40x40"


def test_ms_ssim_leaves_large_enough_images_alone():
    x0_pred, x0 = images(2, 3, 48, 40, seed=19), images(2, 3, 48, 40, seed=20)
    cfg = MetricConfig(name="ms-ssim", win_size=3, min_size=33)
    expected = 1 - pytorch_msssim.ms_ssim(
        unit(x0_pred), unit(x0), data_range=1.0, size_average=False, win_size=3
    )
    # The library's ms_ssim on the same batch: the same operations, equal.
    torch.testing.assert_close(build_metric(cfg)(x0_pred, x0), expected, rtol=0, atol=0)
    assert caption_note(cfg, 48, 40) == ""


def test_ssim_window_larger_than_the_image_names_the_fix():
    with pytest.raises(
        ConfigError,
        match=r"metric.win_size: got 11; ssim's Gaussian window must fit in the image and the "
        r"images are 8x8; set metric.win_size to an odd number from 3 to 7",
    ):
        build_metric(MetricConfig(name="ssim"), (1, 8, 8))
    metric = build_metric(MetricConfig(name="ssim", win_size=9))
    with pytest.raises(InputError, match="odd number from 3 to 7"):
        metric(images(1, 1, 8, 8), images(1, 1, 8, 8))


def test_ms_ssim_on_images_too_small_names_both_fixes():
    with pytest.raises(
        ConfigError,
        match=r"metric.min_size: got 64; ms-ssim with metric.win_size = 11 needs images of at "
        r"least 161x161 .* the images are 32x32; set metric.min_size >= 161 .* or lower "
        r"metric.win_size .*win_size 3 needs 33x33",
    ):
        build_metric(MetricConfig(name="ms-ssim"), (3, 32, 32))
    # The library's own limit is the one checked: one pixel less than ours, it asserts.
    with pytest.raises(AssertionError):
        pytorch_msssim.ms_ssim(images(1, 1, 32, 32), images(1, 1, 32, 32), win_size=3)
    build_metric(MetricConfig(name="ms-ssim", win_size=3, min_size=0), (1, 33, 33))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("win_size", 4, "metric.win_size: must be an odd number >= 3"),
        ("win_size", 1, "metric.win_size: must be an odd number >= 3"),
        ("win_sigma", 0.0, "metric.win_sigma: must be > 0"),
        ("pseudo_huber_c", -0.1, "metric.pseudo_huber_c: must be > 0"),
    ],
)
def test_metric_options_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(MetricConfig, {key: value}, "metric")


def test_caption_notes_name_the_upsampling():
    lpips_vgg = MetricConfig(name="lpips", net="vgg")
    assert caption_note(lpips_vgg, 32, 32) == (
        "lpips-vgg on images upsampled bilinearly from 32x32 to 64x64"
    )
    assert caption_note(lpips_vgg, 64, 64) == ""
    assert caption_note(MetricConfig(name="lpips", min_size=0), 32, 32) == ""
    for name in ("none", "l2", "l1", "pseudo-huber", "ssim"):
        assert caption_note(MetricConfig(name=name, win_size=3), 8, 8) == ""


# --- gradient flow in every architecture --------------------------------------------------------

LOSSES = sorted(set(METRICS) - {"none"})


def small_metric(name: str) -> MetricConfig:
    """Options under which every metric measures 8x8 images (LPIPS without a download)."""
    return MetricConfig(name=name, net="squeeze", trunk="random", min_size=33, win_size=3)


def metric_value_and_model(arch: str, name: str):
    """The metric's per-sample value inside `model.loss` (a forward hook), and the model."""
    torch.manual_seed(0)
    model = build_model(
        ArchitectureConfig(name=arch),
        ModelConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=()),
        Schedule.named("linear", 100),
        1,
        8,
    )
    metric = build_metric(small_metric(name), (1, 8, 8))
    seen = []
    metric.register_forward_hook(lambda module, args, out: seen.append(out))
    x0 = images(4, 1, 8, 8, seed=21)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(22))
    model.loss(x0, torch.tensor([2, 30, 60, 95]), noise, metric)
    (value,) = seen
    return value, model


@pytest.mark.parametrize("name", LOSSES)
def test_casdm_metric_gradient_reaches_phi_and_never_theta(name):
    """Backward from the metric term alone: theta's .grad stays None, phi's is finite, nonzero."""
    value, model = metric_value_and_model("cas-dm", name)
    value.sum().backward()
    assert all(p.grad is None for p in model.theta.parameters())
    phi_grads = [p.grad for p in model.phi.parameters() if p.grad is not None]
    assert phi_grads and all(bool(torch.isfinite(g).all()) for g in phi_grads)
    assert any(torch.count_nonzero(g) > 0 for g in phi_grads)


@pytest.mark.parametrize("arch", ["ddpm", "x0-ddpm", "dual"])
@pytest.mark.parametrize("name", LOSSES)
def test_metric_gradient_reaches_the_single_net(arch, name):
    value, model = metric_value_and_model(arch, name)
    value.sum().backward()
    grads = [p.grad for p in model.net.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(torch.count_nonzero(g) > 0 for g in grads) > len(grads) // 2
