"""Structural similarity losses, 1 - SSIM and 1 - MS-SSIM per sample, via pytorch-msssim.

Images in the project's [-1, 1] are mapped to [0, 1] by (x + 1) / 2 and measured with
data_range = 1. SSIM's luminance term compares means, so it is not shift-invariant: passing
[-1, 1] with data_range = 2 would give a different value, which is why the shift is made.
Predictions are not clamped (clamping would zero the gradient where a prediction is furthest
out of range). The Gaussian window (`metric.win_size`, `metric.win_sigma`) is applied without
padding; SSIM is averaged over the valid window positions and over channels. The image sizes
each takes are its rule in casdm.specs.metrics.
"""

import pytorch_msssim
import torch

from casdm.metrics.base import Metric


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1) / 2


class SSIMMetric(Metric):
    """1 - SSIM (Wang et al. 2004) per sample, via `pytorch_msssim.ssim`."""

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.check_shape(x0)
        similarity = pytorch_msssim.ssim(
            to_unit_range(x0_pred),
            to_unit_range(x0),
            data_range=1.0,
            size_average=False,
            win_size=self.options.win_size,
            win_sigma=self.options.win_sigma,
        )
        return 1 - similarity  # [B]


class MSSSIMMetric(Metric):
    """1 - MS-SSIM (Wang et al. 2003, 5 scales) per sample, via `pytorch_msssim.ms_ssim`.

    Images whose shorter side is below `metric.min_size` are upsampled bilinearly first.
    """

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.check_shape(x0)
        similarity = pytorch_msssim.ms_ssim(
            self.upsample(to_unit_range(x0_pred)),
            self.upsample(to_unit_range(x0)),
            data_range=1.0,
            size_average=False,
            win_size=self.options.win_size,
            win_sigma=self.options.win_sigma,
        )
        return 1 - similarity  # [B]
