"""Metric losses on predicted clean images: `metric(x0_pred, x0) -> [B]`, weighted by the model.

A metric is its own frozen module, separate from the architecture, so its parameters never reach
the optimizer, the EMA or a checkpoint of the model. It owns whatever mapping its network needs
(range, channels, size); callers pass images in the project's [-1, 1], NCHW. Each METRICS entry
checks the image shapes it can take (`check_images`, also called by study validation) and
reports the size it measures at (`input_size`, and `caption_note` for tables).
"""

from casdm.catalog import METRICS
from casdm.config import MetricConfig
from casdm.metrics.base import Metric, NoMetric, mean_flat, upsampled_size
from casdm.metrics.perceptual import LPIPS_MIN_SIDE, LPIPS_TRUNKS, LPIPSMetric
from casdm.metrics.pixel import L1Metric, L2Metric, PseudoHuberMetric, pseudo_huber_c
from casdm.metrics.structural import MSSSIMMetric, SSIMMetric, ms_ssim_min_side
from casdm.registry import lookup


def check_images(cfg: MetricConfig, channels: int | None, height: int, width: int) -> type[Metric]:
    """The metric class of `cfg`, after checking it can measure images of this shape."""
    cls = lookup(METRICS, cfg.name, "metric")
    cls.check_images(cfg, channels, height, width)
    return cls


def build_metric(cfg: MetricConfig, image_shape: tuple[int, int, int] | None = None) -> Metric:
    """The metric `cfg.name`, frozen and in eval mode; checks `image_shape` (C, H, W) if given."""
    cls = lookup(METRICS, cfg.name, "metric")
    if image_shape is not None:
        cls.check_images(cfg, *image_shape)
    return cls(cfg)


def caption_note(cfg: MetricConfig, height: int, width: int) -> str:
    """A caption's note on how the metric sees `height` x `width` images, or "" if as they are.

    E.g. "lpips-vgg on images upsampled bilinearly from 32x32 to 64x64".
    """
    cls = lookup(METRICS, cfg.name, "metric")
    size = cls.input_size(cfg, height, width)
    if cfg.name == "none" or size == (height, width):
        return ""
    return (
        f"{cfg.label} on images upsampled bilinearly from {height}x{width} to {size[0]}x{size[1]}"
    )


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
    "mean_flat",
    "ms_ssim_min_side",
    "pseudo_huber_c",
    "upsampled_size",
]
