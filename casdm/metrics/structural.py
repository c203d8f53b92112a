"""Structural similarity losses, 1 - SSIM and 1 - MS-SSIM per sample, via pytorch-msssim.

Images in the project's [-1, 1] are mapped to [0, 1] by (x + 1) / 2 and measured with
data_range = 1. SSIM's luminance term compares means, so it is not shift-invariant: passing
[-1, 1] with data_range = 2 would give a different value, which is why the shift is made.
Predictions are not clamped (clamping would zero the gradient where a prediction is furthest
out of range). The Gaussian window (`metric.win_size`, `metric.win_sigma`) is applied without
padding; SSIM is averaged over the valid window positions and over channels.
"""

import pytorch_msssim
import torch

from casdm.config import ConfigError, MetricConfig
from casdm.metrics.base import Metric

# pytorch-msssim's MS-SSIM uses 5 scales (Wang et al. 2003's weights) and asserts that the
# shorter side exceeds (win_size - 1) * 2**4, so that the 4th downsampling still holds a window.
MS_SSIM_DOWNSAMPLINGS = 4


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1) / 2


class SSIMMetric(Metric):
    """1 - SSIM (Wang et al. 2004) per sample, via `pytorch_msssim.ssim`."""

    @classmethod
    def check_images(cls, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
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

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.check_images(self.cfg, *x0.shape[1:])
        similarity = pytorch_msssim.ssim(
            to_unit_range(x0_pred),
            to_unit_range(x0),
            data_range=1.0,
            size_average=False,
            win_size=self.cfg.win_size,
            win_sigma=self.cfg.win_sigma,
        )
        return 1 - similarity  # [B]


def ms_ssim_min_side(win_size: int) -> int:
    """The smallest shorter side pytorch-msssim's MS-SSIM accepts for `win_size`."""
    return (win_size - 1) * 2**MS_SSIM_DOWNSAMPLINGS + 1


class MSSSIMMetric(Metric):
    """1 - MS-SSIM (Wang et al. 2003, 5 scales) per sample, via `pytorch_msssim.ms_ssim`.

    Images whose shorter side is below `metric.min_size` are upsampled bilinearly first.
    """

    upsamples = True

    @classmethod
    def check_images(cls, cfg: MetricConfig, channels: int | None, height: int, width: int) -> None:
        need = ms_ssim_min_side(cfg.win_size)
        measured = cls.input_size(cfg, height, width)
        if min(measured) < need:
            raise ConfigError(
                "metric.min_size",
                f"got {cfg.min_size}; ms-ssim with metric.win_size = {cfg.win_size} needs images "
                f"of at least {need}x{need} ((win_size - 1) * 16 + 1: its 5 scales halve the "
                f"image 4 times) and the images are {height}x{width}; set metric.min_size >= "
                f"{need} so they are upsampled bilinearly first, or lower metric.win_size (odd, "
                f">= 3; win_size 3 needs {ms_ssim_min_side(3)}x{ms_ssim_min_side(3)})",
            )

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.check_images(self.cfg, *x0.shape[1:])
        similarity = pytorch_msssim.ms_ssim(
            self.upsample(to_unit_range(x0_pred)),
            self.upsample(to_unit_range(x0)),
            data_range=1.0,
            size_average=False,
            win_size=self.cfg.win_size,
            win_sigma=self.cfg.win_sigma,
        )
        return 1 - similarity  # [B]
