"""LPIPS (Zhang et al. 2018) via the `lpips` package, with the trunk policy of casdm.weights."""

import warnings

import torch

from casdm import weights
from casdm.config import MetricConfig
from casdm.metrics.base import Metric


class LPIPSMetric(Metric):
    """LPIPS per sample, on the trunk `metric.net` (ImageNet weights, or random for smoke runs).

    Inputs are already in LPIPS's [-1, 1] range and are not clamped: clamping would zero the
    gradient exactly where a prediction is furthest out of range, and LPIPS unit-normalises each
    feature vector, so out-of-range inputs do not blow the value up. 1-channel images are repeated
    to RGB; images whose shorter side is below `min_size` are upsampled bilinearly first, as
    consistency models do with 224 (Song et al. 2023); the sizes it takes are its rule in
    casdm.specs.metrics.
    """

    def __init__(self, cfg: MetricConfig):
        super().__init__(cfg)
        import lpips  # imported here: it pulls in torchvision, which only this metric needs

        options = cfg.options
        # Fail with our actionable error rather than torchvision's URLError when offline;
        # torchvision then loads the very file `ensure` checked, from the same hub folder.
        for name in cfg.component.required_weights(options):
            weights.ensure(name)
        with warnings.catch_warnings():
            # torchvision's deprecation notices for the `pretrained=` keyword lpips still uses.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.lpips = lpips.LPIPS(
                net=options.net, pretrained=True, pnet_rand=options.trunk == "random", verbose=False
            )
        self.lpips.requires_grad_(False)
        self.train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Map [B, C, H, W] in [-1, 1] to what the trunk takes: RGB, shorter side >= min_size."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.upsample(x)

    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        self.check_shape(x0)
        return self.lpips(self.prepare(x0_pred), self.prepare(x0)).flatten()  # [B]
