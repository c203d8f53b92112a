"""Metrics on the pixel difference itself: L2, L1 and the Pseudo-Huber distance."""

import torch
import torch.nn.functional as F

from casdm.metrics.base import Metric, mean_flat
from casdm.specs.metrics import pseudo_huber_c


class L2Metric(Metric):
    """Per-sample mean squared error ||x0_pred - x0||^2 / (C H W)."""

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return mean_flat((x0_pred - x0) ** 2)  # [B]


class L1Metric(Metric):
    """Per-sample mean absolute error ||x0_pred - x0||_1 / (C H W)."""

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return mean_flat(F.l1_loss(x0_pred, x0, reduction="none"))  # [B]


class PseudoHuberMetric(Metric):
    """Pseudo-Huber distance sqrt(||x0_pred - x0||_2^2 + c^2) - c per sample.

    Song & Dhariwal 2023 ("Improved techniques for training consistency models", Sec. 3.3): the
    L2 norm is over the whole flattened image, and c = 0.00054 * sqrt(d) with d = C * H * W
    (c = 0.03 for 32x32 RGB), for images in [-1, 1] as here. It is about ||.||_2^2 / (2c) for
    errors much smaller than c and ||.||_2 - c beyond: not divided by d, unlike `l2` and `l1`.
    """

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        diff = (x0_pred - x0).flatten(1)  # [B, D]
        c = pseudo_huber_c(self.options, diff.shape[1])
        return torch.sqrt(diff.pow(2).sum(dim=1) + c * c) - c  # [B]
