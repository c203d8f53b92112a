"""The metric base class and what every metric shares: per-sample reduction, shape checks,
upsampling (the rules themselves are the components' in casdm.specs.metrics)."""

import torch
import torch.nn.functional as F
from torch import nn

from casdm.components import Shape
from casdm.config import MetricConfig, from_dict_checked


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: [B, ...] -> [B]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


class Metric(nn.Module):
    """Base of every metric loss: holds the config, its options, weight, name and label; never
    trainable.

    Which images it takes and the size it measures them at are its component's (`spec`) hooks,
    checked without building the metric (study validation) and by `check_shape` here.
    """

    def __init__(self, cfg: MetricConfig):
        super().__init__()
        self.cfg = cfg
        self.spec = cfg.component
        self.options = cfg.options
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

    def check_shape(self, x: torch.Tensor) -> None:
        """Raise ConfigError if this metric cannot measure images shaped like x [B, C, H, W]."""
        check_images(self.cfg, Shape(*x.shape[1:]))

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] upsampled bilinearly to the metric's input size, or unchanged."""
        size = self.spec.input_size(self.options, *x.shape[-2:])
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


def check_images(cfg: MetricConfig, shape: Shape | None) -> None:
    """ConfigError (key "metric.<option>") unless metric `cfg` can measure images of `shape`."""
    from_dict_checked(
        MetricConfig, "metric", lambda: cfg.component.validate(cfg.options, shape, None)
    )
