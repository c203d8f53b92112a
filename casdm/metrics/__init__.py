"""Metric losses on predicted clean images: `metric(x0_pred, x0) -> [B]`, weighted by the model.

A metric is its own frozen module, separate from the architecture, so its parameters never reach
the optimizer, the EMA or a checkpoint of the model. It owns whatever mapping its network needs
(range, channels, size); callers pass images in the project's [-1, 1], NCHW. The image shapes
each METRICS entry can take (`check_images`) and the size it measures them at (`input_size`,
and `caption_note` for tables) are rules in casdm.metric_shapes, which study validation uses
without loading torch; they are re-exported here.
"""

from casdm.catalog import LPIPS_MIN_SIDE, LPIPS_TRUNKS, METRICS
from casdm.config import MetricConfig
from casdm.metric_shapes import (
    caption_note,
    check_images,
    input_size,
    ms_ssim_min_side,
    pseudo_huber_c,
    upsampled_size,
)
from casdm.metrics.base import Metric, NoMetric, mean_flat
from casdm.metrics.perceptual import LPIPSMetric
from casdm.metrics.pixel import L1Metric, L2Metric, PseudoHuberMetric
from casdm.metrics.structural import MSSSIMMetric, SSIMMetric
from casdm.registry import lookup


def build_metric(cfg: MetricConfig, image_shape: tuple[int, int, int] | None = None) -> Metric:
    """The metric `cfg.name`, frozen and in eval mode; checks `image_shape` (C, H, W) if given."""
    cls = lookup(METRICS, cfg.name, "metric")
    if image_shape is not None:
        check_images(cfg, *image_shape)
    return cls(cfg)


__all__ = [
    "LPIPS_MIN_SIDE",
    "LPIPS_TRUNKS",
    "METRICS",
    "L1Metric",
    "L2Metric",
    "LPIPSMetric",
    "MSSSIMMetric",
    "Metric",
    "NoMetric",
    "PseudoHuberMetric",
    "SSIMMetric",
    "build_metric",
    "caption_note",
    "check_images",
    "input_size",
    "mean_flat",
    "ms_ssim_min_side",
    "pseudo_huber_c",
    "upsampled_size",
]
