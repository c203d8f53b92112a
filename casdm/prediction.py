"""The one model interface: `model(x_t, t) -> Prediction(eps, x0)`."""

from typing import NamedTuple

import torch


class Prediction(NamedTuple):
    """What every architecture predicts at (x_t, t): noise and clean image, both [B, C, H, W]."""

    eps: torch.Tensor
    x0: torch.Tensor
