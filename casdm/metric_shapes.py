"""The images each metric can measure and the size it measures them at; loads no torch.

Pure arithmetic on a MetricConfig, so that a study is checked (`bench list`, validation) without
torch; the metric modules of `casdm.metrics` apply the same rules to the tensors they get.
SHAPE_RULES holds one rule per `casdm.catalog.METRICS` name.
"""

import math

from casdm.catalog import LPIPS_MIN_SIDE
from casdm.config import ConfigError, MetricConfig
from casdm.registry import lookup

# pytorch-msssim's MS-SSIM uses 5 scales (Wang et al. 2003's weights) and asserts that the
# shorter side exceeds (win_size - 1) * 2**4, so that the 4th downsampling still holds a window.
MS_SSIM_DOWNSAMPLINGS = 4


def upsampled_size(height: int, width: int, min_size: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is `min_size`; unchanged if already as large."""
    short = min(height, width)
    if short >= min_size:
        return height, width
    return round(height * min_size / short), round(width * min_size / short)


def ms_ssim_min_side(win_size: int) -> int:
    """The smallest shorter side pytorch-msssim's MS-SSIM accepts for `win_size`."""
    return (win_size - 1) * 2**MS_SSIM_DOWNSAMPLINGS + 1


def pseudo_huber_c(cfg: MetricConfig, dims: int) -> float:
    """c of the Pseudo-Huber distance: `metric.pseudo_huber_c`, else 0.00054 * sqrt(dims)."""
    return cfg.pseudo_huber_c if cfg.pseudo_huber_c is not None else 0.00054 * math.sqrt(dims)


class ShapeRule:
    """A metric that takes images of any shape and measures them as they are."""

    # Whether images whose shorter side is below `metric.min_size` are upsampled first.
    upsamples = False

    def check(self, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
        """Raise ConfigError if images of this shape cannot be measured (channels None: unknown)."""

    def input_size(self, cfg: MetricConfig, height: int, width: int) -> tuple[int, int]:
        """The size images of `height` x `width` are measured at (after any upsampling)."""
        if self.upsamples and cfg.min_size:
            return upsampled_size(height, width, cfg.min_size)
        return height, width


class SSIMRule(ShapeRule):
    """SSIM's Gaussian window must fit in the image; it never resizes."""

    def check(self, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
        side = min(height, width)
        if side < cfg.win_size:
            # pytorch-msssim would skip the smoothing along that side with a warning.
            largest = side if side % 2 else side - 1
            raise ConfigError(
                "metric.win_size",
                f"got {cfg.win_size}; ssim's Gaussian window must fit in the image and the "
                f"images are {height}x{width}; set metric.win_size to an odd number from 3 to "
                f"{largest}",
            )


class MSSSIMRule(ShapeRule):
    """MS-SSIM's window must fit after 4 halvings, measured after upsampling to `min_size`."""

    upsamples = True

    def check(self, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
        need = ms_ssim_min_side(cfg.win_size)
        if min(self.input_size(cfg, height, width)) < need:
            raise ConfigError(
                "metric.min_size",
                f"got {cfg.min_size}; ms-ssim with metric.win_size = {cfg.win_size} needs images "
                f"of at least {need}x{need} ((win_size - 1) * 16 + 1: its 5 scales halve the "
                f"image 4 times) and the images are {height}x{width}; set metric.min_size >= "
                f"{need} so they are upsampled bilinearly first, or lower metric.win_size (odd, "
                f">= 3; win_size 3 needs {ms_ssim_min_side(3)}x{ms_ssim_min_side(3)})",
            )


class LPIPSRule(ShapeRule):
    """LPIPS takes 1-channel or RGB images at least its trunk's minimum side, after upsampling."""

    upsamples = True

    def check(self, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
        if channels is not None and channels not in (1, 3):
            raise ConfigError(
                "metric.name",
                f"metric lpips takes 1-channel or RGB images, got {channels} channels; "
                f"use another metric.name (l2, l1, pseudo-huber, ssim) for this dataset",
            )
        need = LPIPS_MIN_SIDE[cfg.net]
        if min(self.input_size(cfg, height, width)) < need:
            raise ConfigError(
                "metric.min_size",
                f"got {cfg.min_size}; LPIPS-{cfg.net} needs images of at least {need}x{need} "
                f"and the images are {height}x{width}; set metric.min_size >= {need} (default "
                f"64) so they are upsampled bilinearly first",
            )


# METRICS name -> its shape rule.
SHAPE_RULES: dict[str, ShapeRule] = {
    "none": ShapeRule(),
    "l2": ShapeRule(),
    "l1": ShapeRule(),
    "pseudo-huber": ShapeRule(),
    "ssim": SSIMRule(),
    "ms-ssim": MSSSIMRule(),
    "lpips": LPIPSRule(),
}


def check_images(cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
    """Raise ConfigError unless metric `cfg` can measure images of this shape (UnknownNameError
    for an unknown `cfg.name`); `channels` None: not known yet."""
    lookup(SHAPE_RULES, cfg.name, "metric").check(cfg, channels, height, width)


def input_size(cfg: MetricConfig, height: int, width: int) -> tuple[int, int]:
    """The size metric `cfg` measures `height` x `width` images at (after any upsampling)."""
    return lookup(SHAPE_RULES, cfg.name, "metric").input_size(cfg, height, width)


def caption_note(cfg: MetricConfig, height: int, width: int) -> str:
    """A caption's note on how the metric sees `height` x `width` images, or "" if as they are.

    E.g. "lpips-vgg on images upsampled bilinearly from 32x32 to 64x64".
    """
    size = input_size(cfg, height, width)
    if size == (height, width):
        return ""
    return (
        f"{cfg.label} on images upsampled bilinearly from {height}x{width} to {size[0]}x{size[1]}"
    )
