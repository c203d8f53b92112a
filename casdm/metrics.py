"""Metric losses on predicted clean images: `metric(x0_pred, x0) -> [B]`, weighted by the model.

A metric is its own frozen module, separate from the architecture, so its parameters never reach
the optimizer, the EMA or a checkpoint of the model. It owns whatever mapping its network needs
(range, channels, size); callers pass images in the project's [-1, 1], NCHW.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from casdm import weights
from casdm.catalog import LPIPS_MIN_SIDE, LPIPS_TRUNKS, METRICS
from casdm.config import MetricConfig
from casdm.errors import InputError
from casdm.registry import lookup


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: [B, ...] -> [B]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


class Metric(nn.Module):
    """Base of every metric: holds the config's weight, name and label; never trainable."""

    def __init__(self, cfg: MetricConfig):
        super().__init__()
        self.weight = cfg.weight
        self.name = cfg.name
        self.label = cfg.label
        self.train(False)

    @property
    def active(self) -> bool:
        """Whether the architecture should compute this metric at all (a zero term is skipped)."""
        return self.weight > 0

    def train(self, mode: bool = True) -> "Metric":
        """Stay in eval mode whatever the caller asks: a metric is a fixed function, not a model."""
        return super().train(False)


class NoMetric(Metric):
    """No metric loss: the plain diffusion objective."""

    @property
    def active(self) -> bool:
        return False

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return x0.new_zeros(x0.shape[0])  # [B]


class L2Metric(Metric):
    """Per-sample mean squared error ||x0_pred - x0||^2 / (C H W)."""

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return mean_flat((x0_pred - x0) ** 2)  # [B]


# The lpips trunk's hub file, and the smallest square input each trunk accepts (measured with
# lpips 0.1.4: AlexNet's pools fail below 31x31, SqueezeNet's below 17, VGG's below 16).
class LPIPSMetric(Metric):
    """LPIPS (Zhang et al. 2018) via the `lpips` package, per sample.

    Inputs are already in LPIPS's [-1, 1] range and are not clamped: clamping would zero the
    gradient exactly where a prediction is furthest out of range, and LPIPS unit-normalises each
    feature vector, so out-of-range inputs do not blow the value up. 1-channel images are repeated
    to RGB; images whose shorter side is below `min_size` are upsampled bilinearly first, as
    consistency models do with 224 (Song et al. 2023).
    """

    def __init__(self, cfg: MetricConfig):
        super().__init__(cfg)
        import lpips  # imported here: it pulls in torchvision, which only this metric needs

        self.net = cfg.net
        self.min_size = cfg.min_size
        if cfg.trunk == "pretrained":
            # Fail with our actionable error rather than torchvision's URLError when offline;
            # torchvision then loads the very file `ensure` checked, from the same hub folder.
            weights.ensure(LPIPS_TRUNKS[cfg.net])
        with warnings.catch_warnings():
            # torchvision's deprecation notices for the `pretrained=` keyword lpips still uses.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.lpips = lpips.LPIPS(
                net=cfg.net, pretrained=True, pnet_rand=cfg.trunk == "random", verbose=False
            )
        self.lpips.requires_grad_(False)
        self.train(False)

    def check_images(self, channels: int, height: int, width: int) -> None:
        """Raise InputError for images LPIPS cannot take: not 1 or 3 channels, or too small."""
        if channels not in (1, 3):
            raise InputError(
                f"metric lpips takes 1-channel or RGB images, got {channels} channels; "
                f"use metric.name = 'l2' or 'none' for this dataset"
            )
        need = LPIPS_MIN_SIDE[self.net]
        if max(min(height, width), self.min_size) < need:
            raise InputError(
                f"metric lpips-{self.net} needs images of at least {need}x{need}, got "
                f"{height}x{width} with metric.min_size={self.min_size}; set metric.min_size "
                f">= {need} (default 64) so images are upsampled first"
            )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Map [B, C, H, W] in [-1, 1] to what the trunk takes: RGB, shorter side >= min_size."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        height, width = x.shape[-2:]
        short = min(height, width)
        if short < self.min_size:
            size = (round(height * self.min_size / short), round(width * self.min_size / short))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.check_images(*x0.shape[1:])
        return self.lpips(self.prepare(x0_pred), self.prepare(x0)).flatten()  # [B]


def build_metric(cfg: MetricConfig, image_shape: tuple[int, int, int] | None = None) -> Metric:
    """The metric `cfg.name`, frozen and in eval mode; checks `image_shape` (C, H, W) if given."""
    metric = lookup(METRICS, cfg.name, "metric")(cfg)
    if image_shape is not None and isinstance(metric, LPIPSMetric):
        metric.check_images(*image_shape)
    return metric
