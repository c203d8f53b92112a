"""The architectures compared by the benchmark.

Each is an nn.Module with `model(x_t, t) -> Prediction(eps, x0)` for the samplers and
`model.loss(x0, t, noise, metric) -> (loss [B], terms)` for training. Where gradients stop is
part of each architecture: in Cas-DM the eps network theta never sees the metric or the x0 loss.

An architecture whose networks must not influence each other's updates declares them with
`parameter_groups() -> {name: [parameters]}`; training then clips each group's gradient on its
own norm (`casdm.train.parameter_groups`). Cas-DM declares theta and phi, so theta's update is
a function of the eps loss alone, bit for bit, whatever the metric. The others have one network
(ddpm, x0-ddpm) or one shared trunk (dual), through which the metric gradient flows anyway.
"""

from typing import Any

import torch
from torch import nn

from casdm.config import ArchitectureConfig, ModelConfig
from casdm.metrics import Metric, mean_flat
from casdm.prediction import Prediction
from casdm.schedule import Schedule
from casdm.unet import UNet

Terms = dict[str, torch.Tensor]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def unet(
    model: ModelConfig, in_channels: int, out_channels: int, resolution: int, base_channels: int
) -> UNet:
    """A UNet with the shape options of `model` and the given width and channel counts."""
    model.check_resolution(resolution)
    return UNet(
        in_channels=in_channels,
        out_channels=out_channels,
        resolution=resolution,
        base_channels=base_channels,
        channel_mults=model.channel_mults,
        num_res_blocks=model.num_res_blocks,
        attention_resolutions=model.attention_resolutions,
        num_heads=model.num_heads,
        dropout=model.dropout,
    )


def blend_weight(
    logits: torch.Tensor | None, r_mode: str, r_fixed: float, like: torch.Tensor
) -> torch.Tensor:
    """Blending weight r in [0, 1]: sigmoid per pixel, sigmoid of the per-sample mean, or fixed."""
    if r_mode == "pixel":
        return torch.sigmoid(logits)  # [B, 1, H, W]
    if r_mode == "sample":
        return torch.sigmoid(logits.mean(dim=(2, 3), keepdim=True))  # [B, 1, 1, 1]
    return like.new_full((like.shape[0], 1, 1, 1), r_fixed)  # [B, 1, 1, 1]


def metric_term(
    metric: Metric, x0_pred: torch.Tensor, x0: torch.Tensor, terms: Terms
) -> torch.Tensor:
    """metric.weight * metric(x0_pred, x0) per sample, or 0 when the metric is inactive."""
    if not metric.active:
        return x0.new_zeros(x0.shape[0])  # [B]
    value = metric(x0_pred, x0)  # [B]
    terms["metric"] = value.detach().mean()
    return metric.weight * value


class DiffusionModel(nn.Module):
    """The constructor every architecture is built with (`build_model`): it keeps the schedule
    and calls `build` with the architecture's options to create the networks."""

    def __init__(
        self,
        arch: ArchitectureConfig,
        model: ModelConfig,
        schedule: Schedule,
        channels: int,
        resolution: int,
    ):
        super().__init__()
        self.schedule = schedule
        self.build(arch.options, model, channels, resolution)

    def build(self, options: Any, model: ModelConfig, channels: int, resolution: int) -> None:
        """Create the networks for images of `channels` x `resolution` x `resolution`."""
        raise NotImplementedError


class SingleUNet(DiffusionModel):
    """The one-UNet architectures: a UNet from C to C channels."""

    def build(self, options: Any, model: ModelConfig, channels: int, resolution: int) -> None:
        self.net = unet(model, channels, channels, resolution, model.base_channels)


class EpsDDPM(SingleUNet):
    """DDPM (Ho et al. 2020): one UNet predicts eps; the metric acts on x0_from_eps(eps_theta)."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        eps_theta = self.net(x_t, t)  # [B, C, H, W]
        return Prediction(eps_theta, self.schedule.x0_from_eps(x_t, t, eps_theta))

    def loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, metric: Metric
    ) -> tuple[torch.Tensor, Terms]:
        """||eps - eps_theta||^2 (Ho et al. 2020, Eq. 14) + w * metric(x0_from_eps(eps_theta))."""
        x_t = self.schedule.q_sample(x0, t, noise)
        eps_theta, x0_theta = self(x_t, t)
        eps_mse = mean_flat((noise - eps_theta) ** 2)  # [B]
        terms = {"eps_mse": eps_mse.detach().mean()}
        return eps_mse + metric_term(metric, x0_theta, x0, terms), terms


class X0DDPM(SingleUNet):
    """DDPM predicting x0 directly (Ho et al. 2020, Sec. 3.2's alternative parameterisation)."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        x0_theta = self.net(x_t, t)  # [B, C, H, W]
        return Prediction(self.schedule.eps_from_x0(x_t, t, x0_theta), x0_theta)

    def loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, metric: Metric
    ) -> tuple[torch.Tensor, Terms]:
        """||x0 - x0_theta||^2 + w * metric(x0_theta, x0)."""
        x_t = self.schedule.q_sample(x0, t, noise)
        x0_theta = self.net(x_t, t)
        x0_mse = mean_flat((x0 - x0_theta) ** 2)  # [B]
        terms = {"x0_mse": x0_mse.detach().mean()}
        return x0_mse + metric_term(metric, x0_theta, x0, terms), terms


class BlendedX0(DiffusionModel):
    """The architectures with two x0 estimates blended by a weight r (Cas-DM, Dual): their
    shared options (casdm.specs.architectures.BlendOptions) and loss.

    Subclasses implement `predict(x_t, t) -> (eps_theta, x0_blend, r)`; the loss is
    ||eps - eps_theta||^2 + lambda_x0 ||x0 - x0_blend||^2 + w * metric(x0_blend, x0).
    """

    def build(self, options: Any, model: ModelConfig, channels: int, resolution: int) -> None:
        """The blend's options; subclasses create their networks after calling this."""
        self.r_mode = options.r_mode
        self.r_fixed = options.r_fixed
        self.lambda_x0 = options.lambda_x0

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def blend(
        self, logits: torch.Tensor | None, x0_prime: torch.Tensor, x0_other: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_blend, r): r * x0_prime + (1 - r) * x0_other, r from `logits` per `r_mode`."""
        r = blend_weight(logits, self.r_mode, self.r_fixed, x0_prime)
        return r * x0_prime + (1 - r) * x0_other, r

    def r_channels(self) -> int:
        """Output channels of r's logits: 1, or 0 when r is fixed."""
        return 0 if self.r_mode == "fixed" else 1

    def loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, metric: Metric
    ) -> tuple[torch.Tensor, Terms]:
        """||eps - eps_theta||^2 + lambda_x0 ||x0 - x0_blend||^2 + w * metric(x0_blend, x0)."""
        x_t = self.schedule.q_sample(x0, t, noise)
        eps_theta, x0_blend, r = self.predict(x_t, t)
        eps_mse = mean_flat((noise - eps_theta) ** 2)  # [B]
        x0_mse = mean_flat((x0 - x0_blend) ** 2)  # [B]
        terms = {
            "eps_mse": eps_mse.detach().mean(),
            "x0_mse": x0_mse.detach().mean(),
            "r": r.detach().mean(),
        }
        loss = eps_mse + self.lambda_x0 * x0_mse + metric_term(metric, x0_blend, x0, terms)
        return loss, terms


class CasDM(BlendedX0):
    """Cascaded Diffusion Model (An et al. 2024): eps net theta, then x0 net phi fed sg(theta).

    1. x0_star = clip(x0_from_eps(x_t, t, sg(eps_theta)), -1, 1)
    2. phi(concat(x0_star, x_t), t) -> x0_prime and r (options: phi_input, r_mode)
    3. x0_hat = r * x0_prime + (1 - r) * x0_star
    4. theta learns from ||eps - eps_theta||^2 alone; the x0 MSE and the metric act on x0_hat
       and reach phi only (the loss of BlendedX0, with x0_blend = x0_hat)
    5. sampling: x0 = x0_hat, eps = eps_theta (option sampling_eps: the eps implied by x0_hat)
    """

    def build(self, options: Any, model: ModelConfig, channels: int, resolution: int) -> None:
        super().build(options, model, channels, resolution)
        self.phi_input = options.phi_input
        self.sampling_eps = options.sampling_eps
        self.theta = unet(model, channels, channels, resolution, model.base_channels)
        phi_in = 2 * channels if options.phi_input == "x0_star+x_t" else channels
        phi_base = max(8, 8 * round(model.base_channels * options.phi_width / 8))
        # phi gives x0_prime and r's logits.
        self.phi = unet(model, phi_in, channels + self.r_channels(), resolution, phi_base)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """theta and phi, clipped separately: phi's gradients never rescale theta's step."""
        return {"theta": list(self.theta.parameters()), "phi": list(self.phi.parameters())}

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1-3: (eps_theta, x0_hat, r), with theta's graph cut before phi.

        theta runs first, so its dropout masks are the first draws of each step from the
        global RNG; phi draws a fixed number after it and the metric (eval mode) none, so
        theta's masks do not depend on the metric either.
        """
        C = x_t.shape[1]
        eps_theta = self.theta(x_t, t)  # [B, C, H, W]
        x0_star = self.schedule.x0_from_eps(x_t, t, eps_theta.detach()).clamp(-1, 1)
        phi_in = torch.cat([x0_star, x_t], dim=1) if self.phi_input == "x0_star+x_t" else x0_star
        out = self.phi(phi_in, t)  # [B, C (+1), H, W]
        logits = out[:, C:] if self.r_channels() else None
        x0_hat, r = self.blend(logits, out[:, :C], x0_star)
        return eps_theta, x0_hat, r

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        eps_theta, x0_hat, _ = self.predict(x_t, t)
        if self.sampling_eps == "x0_hat":
            return Prediction(self.schedule.eps_from_x0(x_t, t, x0_hat), x0_hat)
        return Prediction(eps_theta, x0_hat)


class DualOutput(BlendedX0):
    """Dual-output diffusion (Benny & Wolf, CVPR 2022): one UNet gives eps, x0' and a weight r.

    x0_blend = r * x0' + (1 - r) * x0_from_eps(eps_theta); since q(x_{t-1} | x_t, x0) is linear
    in x0, sampling from x0_blend is their interpolation of the two posterior means. The eps
    returned for sampling is the one implied by x0_blend, so DDIM steps stay consistent with it.
    """

    def build(self, options: Any, model: ModelConfig, channels: int, resolution: int) -> None:
        super().build(options, model, channels, resolution)
        out = 2 * channels + self.r_channels()  # eps, x0', r logits
        self.net = unet(model, channels, out, resolution, model.base_channels)

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps_theta, x0_blend, r), all from the shared UNet."""
        C = x_t.shape[1]
        out = self.net(x_t, t)  # [B, 2C (+1), H, W]
        eps_theta = out[:, :C]
        logits = out[:, 2 * C :] if self.r_channels() else None
        x0_eps = self.schedule.x0_from_eps(x_t, t, eps_theta)
        x0_blend, r = self.blend(logits, out[:, C : 2 * C], x0_eps)
        return eps_theta, x0_blend, r

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        _, x0_blend, _ = self.predict(x_t, t)
        return Prediction(self.schedule.eps_from_x0(x_t, t, x0_blend), x0_blend)


def build_model(
    arch: ArchitectureConfig,
    model: ModelConfig,
    schedule: Schedule,
    channels: int,
    resolution: int,
) -> nn.Module:
    """The architecture `arch.name` for images of `channels` x `resolution` x `resolution`."""
    return arch.component.load()(arch, model, schedule, channels, resolution)
