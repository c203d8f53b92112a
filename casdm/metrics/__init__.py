"""Metric losses on predicted clean images: `metric(x0_pred, x0) -> [B]`, weighted by the model.

A metric is its own frozen module, separate from the architecture, so its parameters never reach
the optimizer, the EMA or a checkpoint of the model. It owns whatever mapping its network needs
(range, channels, size); callers pass images in the project's [-1, 1], NCHW. Which metric losses
exist, their options, the image shapes each can measure and the size it measures them at are
their components' (casdm.specs.metrics, and plugins), checked without torch.
"""

from casdm.components import Shape
from casdm.config import MetricConfig
from casdm.metrics.base import Metric, NoMetric, check_images, mean_flat


def build_metric(cfg: MetricConfig, image_shape: tuple[int, int, int] | None = None) -> Metric:
    """The metric `cfg.name`, frozen and in eval mode; checks `image_shape` (C, H, W) if given."""
    if image_shape is not None:
        check_images(cfg, Shape(*image_shape))
    return cfg.component.load()(cfg)


__all__ = ["Metric", "NoMetric", "build_metric", "check_images", "mean_flat"]
