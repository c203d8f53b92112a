"""The metric base class and what every metric shares: per-sample reduction, upsampling."""

import torch
import torch.nn.functional as F
from torch import nn

from casdm.config import MetricConfig


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: [B, ...] -> [B]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def upsampled_size(height: int, width: int, min_size: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is `min_size`; unchanged if already as large."""
    short = min(height, width)
    if short >= min_size:
        return height, width
    return round(height * min_size / short), round(width * min_size / short)


class Metric(nn.Module):
    """Base of every metric: holds the config, its weight, name and label; never trainable.

    Class hooks, usable without building the metric (study validation calls them):
    `check_images(cfg, channels, height, width)` raises ConfigError for images the metric cannot
    take, and `input_size(cfg, height, width)` is the size it actually measures images at.
    """

    # Whether images whose shorter side is below `metric.min_size` are upsampled first.
    upsamples = False

    def __init__(self, cfg: MetricConfig):
        super().__init__()
        self.cfg = cfg
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

    @classmethod
    def check_images(cls, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
        """Raise ConfigError if images of this shape cannot be measured (channels None: unknown)."""

    @classmethod
    def input_size(cls, cfg: MetricConfig, height: int, width: int) -> tuple[int, int]:
        """The size images of `height` x `width` are measured at (after any upsampling)."""
        if cls.upsamples and cfg.min_size:
            return upsampled_size(height, width, cfg.min_size)
        return height, width

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] upsampled bilinearly to `input_size`, or unchanged."""
        size = self.input_size(self.cfg, *x.shape[-2:])
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class NoMetric(Metric):
    """No metric loss: the plain diffusion objective."""

    @property
    def active(self) -> bool:
        return False

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return x0.new_zeros(x0.shape[0])  # [B]
