"""A test stand-in for NVIDIA's inception-2015-12-05.pt, written from the file's published code.

The real file cannot be downloaded by the tests. This module rebuilds its interface from what
`torch.jit.load("inception-2015-12-05.pt").code` prints, and nothing else: a `layers`
Sequential whose children are named conv, conv_1, conv_2, pool0, conv_3, conv_4, pool1, mixed,
mixed_1 ... mixed_10, pool2 (mixed_6 with the submodules conv, tower, tower_1, tower_2), a
2048 -> 1008 `output` layer, and the forward

    batch_size, channels, height, width = torch.size(img)
    x = torch.to(img, float16 if use_fp16 else float32)
    theta = torch.eye(2, 3, device=x.device)
    theta[0][2] += theta[0][0] / width - theta[0][0] / 299   (torch.select, add_, div, sub)
    theta[1][2] += theta[1][1] / height - theta[1][1] / 299
    theta = torch.repeat(torch.unsqueeze(torch.to(theta, x.dtype), 0), [batch_size, 1, 1])
    grid = affine_grid(theta, [batch_size, channels, 299, 299], False)
    x = grid_sample(x, grid, "bilinear", "border", False)
    x = (x - 128) / 128
    features = torch.to(torch.reshape(self.layers(x), [-1, 2048]), float32)
    return features if return_features else
        softmax(linear(features, self.output.weight, None if no_output_bias else bias), 1)

typed here in the scripted code's own terms (aten-level `torch.select`/`torch.div`/`torch.sub`,
`torch.affine_grid_generator`, and `torch.grid_sampler` with its integer mode codes).

It deliberately shares no code with bench.evaluation.inception (neither its resize emulation
`TorchScriptInception._network_input` nor its smoke-run stand-in `torchscript_standin`), so the
tests comparing the two can fail when the emulation is wrong. The blocks are clean-fid's and
torchvision's Inception blocks (the architecture of the FID Inception) under the file's names,
with seeded random weights.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from cleanfid.inception_pytorch import (
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE_1,
    FIDInceptionE_2,
)
from torch import Tensor, nn
from torchvision.models.inception import BasicConv2d, InceptionB, InceptionD


class Mixed6(nn.Module):
    """The file's mixed_6 (an Inception-C block, 7x7 factorised with 160 channels), under its
    submodule names: conv (1x1, 192), tower (1x1, 1x7, 7x1), tower_1 (1x1, 7x1, 1x7, 7x1, 1x7),
    tower_2 (3x3 average pool without the padding, then 1x1)."""

    def __init__(self, in_channels: int = 768, c7: int = 160):
        super().__init__()
        self.conv = BasicConv2d(in_channels, 192, kernel_size=1)
        self.tower = nn.Sequential(
            BasicConv2d(in_channels, c7, kernel_size=1),
            BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3)),
            BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0)),
        )
        self.tower_1 = nn.Sequential(
            BasicConv2d(in_channels, c7, kernel_size=1),
            BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0)),
            BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3)),
            BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0)),
            BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3)),
        )
        self.tower_2 = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
            BasicConv2d(in_channels, 192, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionStandIn(nn.Module):
    """inception-2015-12-05.pt's modules and forward (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            OrderedDict(
                conv=BasicConv2d(3, 32, kernel_size=3, stride=2),
                conv_1=BasicConv2d(32, 32, kernel_size=3),
                conv_2=BasicConv2d(32, 64, kernel_size=3, padding=1),
                pool0=nn.MaxPool2d(3, stride=2),
                conv_3=BasicConv2d(64, 80, kernel_size=1),
                conv_4=BasicConv2d(80, 192, kernel_size=3),
                pool1=nn.MaxPool2d(3, stride=2),
                mixed=FIDInceptionA(192, pool_features=32),
                mixed_1=FIDInceptionA(256, pool_features=64),
                mixed_2=FIDInceptionA(288, pool_features=64),
                mixed_3=InceptionB(288),
                mixed_4=FIDInceptionC(768, channels_7x7=128),
                mixed_5=FIDInceptionC(768, channels_7x7=160),
                mixed_6=Mixed6(768, 160),
                mixed_7=FIDInceptionC(768, channels_7x7=192),
                mixed_8=InceptionD(768),
                mixed_9=FIDInceptionE_1(1280),
                mixed_10=FIDInceptionE_2(2048),
                pool2=nn.AvgPool2d(8, stride=8),
            )
        )
        self.output = nn.Linear(2048, 1008)

    @torch.jit.export
    def network_input(self, img: Tensor, use_fp16: bool = False) -> Tensor:
        """The forward up to `layers`: the TensorFlow-style resize to 299x299, then scaling."""
        batch_size, channels, height, width = img.size()
        x = img.to(torch.float16 if use_fp16 else torch.float32)
        theta = torch.eye(2, 3, device=x.device)
        row_0 = torch.select(theta, 0, 0)
        scale_x = torch.select(row_0, 0, 0)
        torch.select(row_0, 0, 2).add_(
            torch.sub(torch.div(scale_x, width), torch.div(scale_x, 299))
        )
        row_1 = torch.select(theta, 0, 1)
        scale_y = torch.select(row_1, 0, 1)
        torch.select(row_1, 0, 2).add_(
            torch.sub(torch.div(scale_y, height), torch.div(scale_y, 299))
        )
        theta = torch.unsqueeze(theta.to(x.dtype), 0).repeat([batch_size, 1, 1])
        grid = torch.affine_grid_generator(theta, [batch_size, channels, 299, 299], False)
        x = torch.grid_sampler(x, grid, 0, 1, False)  # bilinear (0), border (1)
        return torch.div(torch.sub(x, 128), 128)

    def forward(
        self,
        img: Tensor,
        return_features: bool = False,
        use_fp16: bool = False,
        no_output_bias: bool = False,
    ) -> Tensor:
        x = self.network_input(img, use_fp16)
        features = torch.reshape(self.layers(x), [-1, 2048]).to(torch.float32)
        if return_features:
            return features
        if no_output_bias:
            logits = F.linear(features, self.output.weight, None)
        else:
            logits = self.output(features)
        return torch.softmax(logits, 1)


def seeded(module: nn.Module, seed: int) -> nn.Module:
    """`module` with seeded random weights: He-normal convolutions (unit-scale activations
    through the 94 conv-BN-ReLU layers), identity batch norms, an output layer with a
    non-zero bias (so that no_output_bias matters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 4:  # every convolution's weight
                fan_in = param[0].numel()
                param.normal_(0, math.sqrt(2 / fan_in), generator=generator)
            elif name == "output.weight":
                param.normal_(0, param.shape[1] ** -0.5, generator=generator)
            elif name == "output.bias":
                param.normal_(0, 1, generator=generator)
    return module


def inception_standin(seed: int = 0) -> torch.jit.ScriptModule:
    """The stand-in with seeded random weights, scripted (save it as inception-2015-12-05.pt)."""
    return torch.jit.script(seeded(InceptionStandIn(), seed).eval())
