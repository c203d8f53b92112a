"""The built-in metric losses: options, the image shapes each can measure, labels, weights.

Pure arithmetic on the options, so that a study is checked without torch; the metric modules
of casdm.metrics (`target`) apply the same rules to the tensors they get.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from casdm.components import MetricLoss, Shape, register
from casdm.config import ConfigError, check

# LPIPS: the torchvision trunk each `metric.net` loads (a casdm.weights name), and the smallest
# image side it accepts.
LPIPS_TRUNKS = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet"}
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16, "squeeze": 17}
# pytorch-msssim's MS-SSIM uses 5 scales (Wang et al. 2003's weights) and asserts that the
# shorter side exceeds (win_size - 1) * 2**4, so that the 4th downsampling still holds a window.
MS_SSIM_DOWNSAMPLINGS = 4


@dataclass(frozen=True)
class MetricOptions:
    """Options of a metric loss that takes none of its own."""


@dataclass(frozen=True)
class UpsampleOptions(MetricOptions):
    # Images whose shorter side is below this are upsampled bilinearly first (0 disables).
    min_size: int = 64

    def __post_init__(self):
        check(self.min_size >= 0, "min_size", f"must be >= 0, got {self.min_size}")


@dataclass(frozen=True)
class WindowOptions(MetricOptions):
    # Side and standard deviation of the Gaussian window (Wang et al.: 11, 1.5).
    win_size: int = 11
    win_sigma: float = 1.5

    def __post_init__(self):
        check(
            self.win_size >= 3 and self.win_size % 2 == 1,
            "win_size",
            f"must be an odd number >= 3 (ssim, ms-ssim Gaussian window), got {self.win_size}",
        )
        check(self.win_sigma > 0, "win_sigma", f"must be > 0, got {self.win_sigma}")


@dataclass(frozen=True)
class MSSSIMOptions(WindowOptions, UpsampleOptions):
    def __post_init__(self):
        WindowOptions.__post_init__(self)
        UpsampleOptions.__post_init__(self)


@dataclass(frozen=True)
class PseudoHuberOptions(MetricOptions):
    # c in sqrt(||x - y||^2 + c^2) - c; unset: 0.00054 * sqrt(C * H * W) (Song & Dhariwal 2023).
    pseudo_huber_c: float | None = None

    def __post_init__(self):
        check(
            self.pseudo_huber_c is None or self.pseudo_huber_c > 0,
            "pseudo_huber_c",
            f"must be > 0 (or left unset for 0.00054 * sqrt(C * H * W)), got {self.pseudo_huber_c}",
        )


@dataclass(frozen=True)
class LPIPSOptions(UpsampleOptions):
    net: Literal["alex", "vgg", "squeeze"] = "alex"  # the trunk network
    # `pretrained`: ImageNet trunk (downloaded once); `random`: untrained, tests/smoke only.
    trunk: Literal["pretrained", "random"] = "pretrained"


def upsampled_size(height: int, width: int, min_size: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is `min_size`; unchanged if already as large."""
    short = min(height, width)
    if not min_size or short >= min_size:
        return height, width
    return round(height * min_size / short), round(width * min_size / short)


def ms_ssim_min_side(win_size: int) -> int:
    """The smallest shorter side pytorch-msssim's MS-SSIM accepts for `win_size`."""
    return (win_size - 1) * 2**MS_SSIM_DOWNSAMPLINGS + 1


def pseudo_huber_c(options: PseudoHuberOptions, dims: int) -> float:
    """c of the Pseudo-Huber distance: `metric.pseudo_huber_c`, else 0.00054 * sqrt(dims)."""
    c = options.pseudo_huber_c
    return c if c is not None else 0.00054 * math.sqrt(dims)


@dataclass(frozen=True, kw_only=True)
class Upsampling(MetricLoss):
    """A metric loss that upsamples images below `options.min_size` first."""

    def input_size(self, options: UpsampleOptions, height: int, width: int) -> tuple[int, int]:
        return upsampled_size(height, width, options.min_size)


@dataclass(frozen=True, kw_only=True)
class SSIM(MetricLoss):
    """SSIM's Gaussian window must fit in the image; it never resizes."""

    def validate(self, options: WindowOptions, shape: Shape | None, config: Any) -> None:
        if shape is None:
            return
        side = min(shape.height, shape.width)
        if side < options.win_size:
            # pytorch-msssim would skip the smoothing along that side with a warning.
            largest = side if side % 2 else side - 1
            raise ConfigError(
                "win_size",
                f"got {options.win_size}; ssim's Gaussian window must fit in the image and the "
                f"images are {shape.height}x{shape.width}; set metric.win_size to an odd number "
                f"from 3 to {largest}",
            )


@dataclass(frozen=True, kw_only=True)
class MSSSIM(Upsampling):
    """MS-SSIM's window must fit after 4 halvings, measured after upsampling to `min_size`."""

    def validate(self, options: MSSSIMOptions, shape: Shape | None, config: Any) -> None:
        if shape is None:
            return
        need = ms_ssim_min_side(options.win_size)
        if min(self.input_size(options, shape.height, shape.width)) < need:
            smallest = ms_ssim_min_side(3)
            raise ConfigError(
                "min_size",
                f"got {options.min_size}; ms-ssim with metric.win_size = {options.win_size} "
                f"needs images of at least {need}x{need} ((win_size - 1) * 16 + 1: its 5 scales "
                f"halve the image 4 times) and the images are {shape.height}x{shape.width}; set "
                f"metric.min_size >= {need} so they are upsampled bilinearly first, or lower "
                f"metric.win_size (odd, >= 3; win_size 3 needs {smallest}x{smallest})",
            )


@dataclass(frozen=True, kw_only=True)
class LPIPS(Upsampling):
    """LPIPS takes 1-channel or RGB images at least its trunk's minimum side, after upsampling;
    a pretrained trunk is downloaded once, a random one is labelled wherever a result shows."""

    def label(self, options: LPIPSOptions) -> str:
        return f"lpips-{options.net}" + ("(random-trunk)" if options.trunk == "random" else "")

    def required_weights(self, options: LPIPSOptions) -> tuple[str, ...]:
        return (LPIPS_TRUNKS[options.net],) if options.trunk == "pretrained" else ()

    def offline(self, options: LPIPSOptions) -> LPIPSOptions:
        return dataclasses.replace(options, trunk="random")  # the same network, untrained

    def caveats(self, options: LPIPSOptions) -> tuple[str, ...]:
        if options.trunk == "random":
            return ("LPIPS used a random (untrained) trunk: a smoke test, not a result.",)
        return ()

    def validate(self, options: LPIPSOptions, shape: Shape | None, config: Any) -> None:
        if shape is None:
            return
        if shape.channels is not None and shape.channels not in (1, 3):
            raise ConfigError(
                "name",
                f"metric lpips takes 1-channel or RGB images, got {shape.channels} channels; "
                f"use another metric.name (l2, l1, pseudo-huber, ssim) for this dataset",
            )
        need = LPIPS_MIN_SIDE[options.net]
        if min(self.input_size(options, shape.height, shape.width)) < need:
            raise ConfigError(
                "min_size",
                f"got {options.min_size}; LPIPS-{options.net} needs images of at least "
                f"{need}x{need} and the images are {shape.height}x{shape.width}; set "
                f"metric.min_size >= {need} (default 64) so they are upsampled bilinearly first",
            )


NONE = register(
    MetricLoss(
        name="none",
        target="casdm.metrics.base:NoMetric",
        options=MetricOptions,
        summary="no metric loss: the plain diffusion objective",
    )
)
L2 = register(
    MetricLoss(
        name="l2",
        target="casdm.metrics.pixel:L2Metric",
        options=MetricOptions,
        summary="mean squared error on x0",
    )
)
L1 = register(
    MetricLoss(
        name="l1",
        target="casdm.metrics.pixel:L1Metric",
        options=MetricOptions,
        summary="mean absolute error on x0",
    )
)
PSEUDO_HUBER = register(
    MetricLoss(
        name="pseudo-huber",
        target="casdm.metrics.pixel:PseudoHuberMetric",
        options=PseudoHuberOptions,
        summary="sqrt(||x - y||^2 + c^2) - c (Song & Dhariwal 2023)",
    )
)
SSIM_LOSS = register(
    SSIM(
        name="ssim",
        target="casdm.metrics.structural:SSIMMetric",
        options=WindowOptions,
        summary="1 - SSIM, Gaussian window (Wang et al. 2004)",
    )
)
MS_SSIM_LOSS = register(
    MSSSIM(
        name="ms-ssim",
        target="casdm.metrics.structural:MSSSIMMetric",
        options=MSSSIMOptions,
        summary="1 - MS-SSIM, 5 scales (Wang et al. 2003)",
    )
)
LPIPS_LOSS = register(
    LPIPS(
        name="lpips",
        target="casdm.metrics.perceptual:LPIPSMetric",
        options=LPIPSOptions,
        summary="LPIPS distance (Zhang et al. 2018), AlexNet/VGG/SqueezeNet trunk",
    )
)
