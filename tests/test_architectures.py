"""Architectures: the shared contract, loss formulas, Cas-DM options and where gradients stop."""

import itertools

import pytest
import torch

from casdm.architectures import build_model, count_parameters
from casdm.components import registry
from casdm.config import ArchitectureConfig, ConfigError, MetricConfig, ModelConfig
from casdm.metrics import build_metric
from casdm.schedule import Schedule

ARCHITECTURES = registry("architecture").names()
METRICS = registry("metric").names()

B, C, RES, T = 2, 1, 8, 100
TINY = ModelConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,))


def make(name: str, model: ModelConfig = TINY, channels: int = C, **options):
    torch.manual_seed(0)
    arch = ArchitectureConfig(name=name, **options)
    return build_model(arch, model, Schedule.named("linear", T), channels, RES)


def batch(channels: int = C, seed: int = 1):
    """x0 in [-1, 1], steps spanning the schedule, and the noise."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, channels, RES, RES, generator=g) * 2 - 1
    noise = torch.randn(B, channels, RES, RES, generator=g)
    return x0, torch.tensor([3, 71]), noise


def metric_for(name: str, weight: float = 0.5):
    """Every metric at options that measure 8x8 images (ssim's window 3, ms-ssim at 33x33)."""
    cfg = MetricConfig(
        name=name, weight=weight, net="squeeze", trunk="random", min_size=33, win_size=3
    )
    return build_metric(cfg)


def mse(a, b):
    return ((a - b) ** 2).mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def metrics():
    return {name: metric_for(name) for name in METRICS}


def capture_output(metric):
    """Record the metric's differentiable per-sample output during model.loss."""
    seen = []
    metric.register_forward_hook(lambda module, args, out: seen.append(out))
    return seen


def grads(output: torch.Tensor, params) -> list[torch.Tensor]:
    """d output.sum() / d params, with unreached parameters as explicit zeros."""
    return torch.autograd.grad(
        output.sum(), list(params), retain_graph=True, allow_unused=True, materialize_grads=True
    )


def test_registry_names():
    assert set(ARCHITECTURES) == {"ddpm", "x0-ddpm", "cas-dm", "dual"}


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ConfigError, match="valid architectures: cas-dm, ddpm, dual, x0-ddpm"):
        make("edm")


@pytest.mark.parametrize(("arch", "metric_name"), list(itertools.product(ARCHITECTURES, METRICS)))
def test_contract(arch, metric_name, metrics):
    model = make(arch)
    metric = metrics[metric_name]
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    eps, x0_pred = model(x_t, t)
    assert eps.shape == x0_pred.shape == (B, C, RES, RES)

    loss, terms = model.loss(x0, t, noise, metric)
    assert loss.shape == (B,)
    assert bool(torch.isfinite(loss).all())
    assert all(v.shape == () and not v.requires_grad for v in terms.values())
    assert ("metric" in terms) == (metric_name != "none")
    loss.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in metric.parameters())


def test_terms_name_each_part(metrics):
    x0, t, noise = batch()
    assert set(make("ddpm").loss(x0, t, noise, metrics["l2"])[1]) == {"eps_mse", "metric"}
    assert set(make("x0-ddpm").loss(x0, t, noise, metrics["none"])[1]) == {"x0_mse"}
    for arch in ("cas-dm", "dual"):
        terms = make(arch).loss(x0, t, noise, metrics["lpips"])[1]
        assert set(terms) == {"eps_mse", "x0_mse", "metric", "r"}
        assert 0 < terms["r"] < 1


def test_ddpm_loss_and_prediction_follow_eps_parameterisation(metrics):
    model = make("ddpm")
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    eps_theta = model.net(x_t, t)
    pred = model(x_t, t)
    torch.testing.assert_close(pred.eps, eps_theta)
    torch.testing.assert_close(pred.x0, model.schedule.x0_from_eps(x_t, t, eps_theta))
    loss, terms = model.loss(x0, t, noise, metrics["l2"])
    expected = mse(noise, eps_theta) + 0.5 * mse(pred.x0, x0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["eps_mse"], mse(noise, eps_theta).mean())


def test_x0_ddpm_loss_and_prediction_follow_x0_parameterisation(metrics):
    model = make("x0-ddpm")
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    x0_theta = model.net(x_t, t)
    pred = model(x_t, t)
    torch.testing.assert_close(pred.x0, x0_theta)
    torch.testing.assert_close(model.schedule.x0_from_eps(x_t, t, pred.eps), x0_theta)
    loss, _ = model.loss(x0, t, noise, metrics["l2"])
    torch.testing.assert_close(loss, 1.5 * mse(x0, x0_theta))


def casdm_reference(model, x_t, t):
    """Steps 1-3 of Cas-DM written out from the two networks' raw outputs."""
    eps_theta = model.theta(x_t, t)
    x0_star = model.schedule.x0_from_eps(x_t, t, eps_theta).clamp(-1, 1)
    phi_in = torch.cat([x0_star, x_t], 1) if model.phi_input == "x0_star+x_t" else x0_star
    out = model.phi(phi_in, t)
    if model.r_mode == "pixel":
        r = torch.sigmoid(out[:, C:])
    elif model.r_mode == "sample":
        r = torch.sigmoid(out[:, C:].mean(dim=(2, 3), keepdim=True))
    else:
        r = model.r_fixed
    return eps_theta, x0_star, out[:, :C], r


@pytest.mark.parametrize(
    ("options", "phi_in", "phi_out"),
    [
        ({}, 2 * C, C + 1),
        ({"phi_input": "x0_star"}, C, C + 1),
        ({"r_mode": "sample"}, 2 * C, C + 1),
        ({"r_mode": "fixed", "r_fixed": 0.25}, 2 * C, C),
    ],
)
def test_casdm_options_set_channels_and_blend(options, phi_in, phi_out):
    model = make("cas-dm", **options)
    assert model.phi.stem.in_channels == phi_in
    assert model.phi.out[-1].out_channels == phi_out
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    eps_theta, x0_star, x0_prime, r = casdm_reference(model, x_t, t)
    pred = model(x_t, t)
    assert torch.equal(pred.eps, eps_theta)
    torch.testing.assert_close(pred.x0, r * x0_prime + (1 - r) * x0_star, rtol=0, atol=1e-6)
    if options.get("r_mode") == "fixed":
        assert torch.equal(pred.x0, 0.25 * x0_prime + 0.75 * x0_star)


def test_casdm_sampling_eps_from_x0_hat_is_consistent_with_x0_hat():
    model = make("cas-dm", sampling_eps="x0_hat")
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    pred = model(x_t, t)
    torch.testing.assert_close(pred.eps, model.schedule.eps_from_x0(x_t, t, pred.x0))
    torch.testing.assert_close(model.schedule.x0_from_eps(x_t, t, pred.eps), pred.x0)
    assert not torch.allclose(pred.eps, model.theta(x_t, t))


@pytest.mark.parametrize(("width", "base"), [(1.0, 16), (0.5, 8), (0.3, 8), (2.0, 32), (0.75, 16)])
def test_casdm_phi_width_rounds_to_a_multiple_of_eight(width, base):
    model = make("cas-dm", ModelConfig(base_channels=16, channel_mults=(1, 2)), phi_width=width)
    assert model.theta.base_channels == 16
    assert model.phi.base_channels == base


def test_casdm_loss_is_eps_mse_plus_x0_mse_plus_metric(metrics):
    model = make("cas-dm", lambda_x0=0.7)
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    eps_theta, _, _, _ = casdm_reference(model, x_t, t)
    x0_hat = model(x_t, t).x0
    loss, terms = model.loss(x0, t, noise, metrics["l2"])
    expected = mse(noise, eps_theta) + 0.7 * mse(x0, x0_hat) + 0.5 * mse(x0_hat, x0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["x0_mse"], mse(x0, x0_hat).mean())


@pytest.mark.parametrize("metric_name", ["l2", "lpips"])
def test_casdm_metric_gradient_never_reaches_eps_net(metric_name):
    model, metric = make("cas-dm"), metric_for(metric_name)
    seen = capture_output(metric)
    model.loss(*batch(), metric)
    (value,) = seen
    for g in grads(value, model.theta.parameters()):
        assert torch.count_nonzero(g) == 0
    assert any(torch.count_nonzero(g) > 0 for g in grads(value, model.phi.parameters()))


def test_casdm_x0_loss_gradient_never_reaches_eps_net(metrics):
    """Theta's gradient is bit-identical with and without the x0 term; phi's is not."""
    model = make("cas-dm")
    x0, t, noise = batch()
    with_x0 = grads(model.loss(x0, t, noise, metrics["none"])[0], model.parameters())
    model.lambda_x0 = 0.0
    without = grads(model.loss(x0, t, noise, metrics["none"])[0], model.parameters())
    n_theta = len(list(model.theta.parameters()))
    for a, b in zip(with_x0[:n_theta], without[:n_theta], strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, b) for a, b in zip(with_x0[n_theta:], without[n_theta:], strict=True)
    )


def test_casdm_x0_hat_does_not_depend_on_theta_parameters():
    model = make("cas-dm")
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    for g in grads(model(x_t, t).x0, model.theta.parameters()):
        assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("arch", ["ddpm", "x0-ddpm", "dual"])
def test_metric_gradient_reaches_the_single_net(arch):
    model, metric = make(arch), metric_for("lpips")
    seen = capture_output(metric)
    model.loss(*batch(), metric)
    (value,) = seen
    nonzero = [torch.count_nonzero(g) > 0 for g in grads(value, model.net.parameters())]
    assert sum(nonzero) > len(nonzero) // 2


def test_metric_with_zero_weight_is_not_computed():
    metric = metric_for("lpips", weight=0.0)
    seen = capture_output(metric)
    _, terms = make("cas-dm").loss(*batch(), metric)
    assert seen == [] and "metric" not in terms


@pytest.mark.parametrize(
    ("r_mode", "out"), [("pixel", 2 * C + 1), ("sample", 2 * C + 1), ("fixed", 2 * C)]
)
def test_dual_blends_its_two_x0_estimates(r_mode, out):
    model = make("dual", r_mode=r_mode, r_fixed=0.4)
    assert model.net.out[-1].out_channels == out
    x0, t, noise = batch()
    x_t = model.schedule.q_sample(x0, t, noise)
    raw = model.net(x_t, t)
    eps_theta, x0_prime = raw[:, :C], raw[:, C : 2 * C]
    r = {
        "pixel": lambda: torch.sigmoid(raw[:, 2 * C :]),
        "sample": lambda: torch.sigmoid(raw[:, 2 * C :].mean(dim=(2, 3), keepdim=True)),
        "fixed": lambda: 0.4,
    }[r_mode]()
    x0_blend = r * x0_prime + (1 - r) * model.schedule.x0_from_eps(x_t, t, eps_theta)
    pred = model(x_t, t)
    torch.testing.assert_close(pred.x0, x0_blend)
    torch.testing.assert_close(pred.eps, model.schedule.eps_from_x0(x_t, t, x0_blend))
    loss, _ = model.loss(x0, t, noise, metric_for("none"))
    torch.testing.assert_close(loss, mse(noise, eps_theta) + mse(x0, x0_blend))


def test_rgb_images_work_end_to_end(metrics):
    for arch in ARCHITECTURES:
        model = make(arch, channels=3)
        loss, _ = model.loss(*batch(channels=3), metrics["lpips"])
        assert loss.shape == (B,) and bool(torch.isfinite(loss).all())


def test_count_parameters_counts_trainable_only():
    model = make("cas-dm", ModelConfig(base_channels=16, channel_mults=(1, 2)), phi_width=0.5)
    expected = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == expected
    assert count_parameters(model.phi) < count_parameters(model.theta)
    model.theta.requires_grad_(False)
    assert count_parameters(model) == expected - sum(p.numel() for p in model.theta.parameters())


def test_attention_equals_adms_conv1d_form_and_loads_its_checkpoints():
    """The projections are linear layers; ADM's QKVAttention applies the same maps as 1x1
    Conv1d on [B, C, HW]. Written here that way, with weights [out, in, 1], as checkpoints
    made before held them: they load, and both give the same output."""
    import torch.nn.functional as F
    from torch import nn

    from casdm.unet import Attention, norm

    class ConvAttention(nn.Module):
        def __init__(self, channels, heads):
            super().__init__()
            self.heads = heads
            self.norm = norm(channels)
            self.qkv = nn.Conv1d(channels, 3 * channels, 1)
            self.proj = nn.Conv1d(channels, channels, 1)

        def forward(self, x):
            B, C, H, W = x.shape
            qkv = self.qkv(self.norm(x).reshape(B, C, H * W))
            q, k, v = qkv.reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
            h = F.scaled_dot_product_attention(*(a.transpose(-1, -2) for a in (q, k, v)))
            return x + self.proj(h.transpose(-1, -2).reshape(B, C, H * W)).reshape(B, C, H, W)

    torch.manual_seed(0)
    for heads in (1, 4):
        reference = ConvAttention(32, heads)
        attention = Attention(32, heads)
        attention.load_state_dict(reference.state_dict())
        x = torch.randn(2, 32, 8, 8)
        torch.testing.assert_close(attention(x), reference(x), rtol=1e-5, atol=1e-5)
        assert attention.qkv.weight.shape == (96, 32)
