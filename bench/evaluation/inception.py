"""The FID Inception under clean-fid's three protocols, each reproducing its `compute_fid` exactly.

A protocol is clean-fid's `mode`: its resizer (`cleanfid.resize.build_resizer(mode)`, applied
image by image as its `ResizeDataset` does) and its feature network
(`cleanfid.features.build_feature_extractor(mode)`):

- `clean`: PIL bicubic resize to 299 in float32, then clean-fid's `InceptionV3W` (its wrapper of
  the TorchScript translation of TensorFlow's 2015-12-05 Inception graph,
  `inception-2015-12-05.pt`), which scales the input to (x - 128) / 128.
- `legacy_tensorflow`: no resize outside the network; the TorchScript network's own forward
  resizes (bilinear `grid_sample` emulating TensorFlow's resize, as the TTUR and ADM numbers
  were made) and scales.
- `legacy_pytorch`: PyTorch bilinear resize, then pytorch-fid's port of the same graph
  (`pt_inception-2015-12-05-6726825d.pth`), which scales the input to 2x / 255 - 1.

Every protocol gives all feature kinds from one pass of its network: pool3 (FID, KID,
precision/recall), the first 7 channels of mixed_6/conv, flattened channels-last (ADM's sFID),
and the logits of the 1008-way output layer without its bias (ADM's and StyleGAN's IS). The
TorchScript network is run block by block (its `layers` children, in their order) so that
mixed_6/conv can be read on the way; for `legacy_tensorflow` its resize is done first with the
operations of its forward. Both are checked, at the first batch of every input size, against
clean-fid's own feature call on the same network: pool features must agree, or no score is given.
"""

import contextlib
import functools
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation.evaluator import Evaluator, Features, state_dict_sha256
from bench.evaluation.evaluators import PROTOCOLS, Protocol
from casdm import weights
from casdm.config import DataConfig
from casdm.errors import MissingWeightsError

SIZE = 299  # the network's input resolution
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 channels of mixed_6/conv: 17 * 17 * 7 = 2023
DIMS = (2048, 17 * 17 * SPATIAL_CHANNELS, 1008)
TORCHSCRIPT_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads


def cleanfid_inputs(images: torch.Tensor, mode: str) -> torch.Tensor:
    """What clean-fid feeds its feature network for uint8 images [B, C, H, W] (C = 1 or 3).

    `cleanfid.utils.ResizeDataset`, image by image: RGB HWC uint8, `build_resizer(mode)`, then
    `ToTensor()` (times 255 for uint8 results, as clean-fid does). Returns float32
    [B, 3, h, w] on the CPU, in [0, 255].
    """
    from cleanfid.resize import build_resizer
    from torchvision.transforms.functional import to_tensor

    resize = build_resizer(mode)
    rgb = images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3]
    out = []
    for image in rgb:
        resized = resize(np.ascontiguousarray(image))
        if resized.dtype == np.uint8:
            out.append(to_tensor(resized) * 255)
        elif resized.dtype == np.float32:
            out.append(to_tensor(resized))
        else:  # clean-fid's dataset would return None here
            raise BenchError(f"clean-fid's {mode} resizer returned {resized.dtype} images")
    return torch.stack(out)


@contextlib.contextmanager
def _quiet_loaders():
    """Silence the deprecation warnings torch and torchvision give clean-fid's loaders."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        warnings.filterwarnings(
            "ignore", message="The parameter 'pretrained'", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message="Arguments other than a weight", category=UserWarning
        )
        yield


def _spatial(mixed_6_conv: torch.Tensor) -> torch.Tensor:
    """ADM's sFID layout: first 7 channels of [B, 192, 17, 17], flattened channels-last."""
    return mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)


class InceptionEvaluator(Evaluator):
    """The FID Inception under one protocol; inputs uint8, 1 or 3 channels (gray is repeated)."""

    # At 299x299 an image's largest activation is 64x147x147 floats (5.5 MB). glibc's malloc
    # serves blocks over 32 MiB with fresh mmaps, which the kernel zeroes page by page at every
    # call: at 100 images a call, system time was a quarter of the pass's CPU time. Calls of 4
    # images stay under it (buffers reused): measured 1.2-1.4x faster and a third of the peak
    # memory. Pool and spatial features are bit for bit those of one call; the logits, one
    # matrix product over the call's rows, move in round-off, as between any two batch sizes.
    cpu_chunk = 4

    def __init__(
        self,
        network: nn.Module,
        protocol: Protocol,
        *,
        weights_hash: str,
        device: torch.device,
        random_weights: bool = False,
    ):
        super().__init__(
            network,
            name=f"inception:{protocol.name}",
            title=f"Inception/{protocol.name}",
            weights_hash=weights_hash,
            dims=DIMS,
            channels=(1, 3),
            device=device,
            random_weights=random_weights,
            protocol=protocol.name,
        )
        self.spec = protocol
        self.prepare = functools.partial(cleanfid_inputs, mode=protocol.name)

    def cleanfid_extractor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """clean-fid's feature function for this protocol, on this network: what
        `cleanfid.features.build_feature_extractor(mode)` returns, [B, 3, h, w] -> [B, 2048]."""
        raise NotImplementedError


class TorchScriptInception(InceptionEvaluator):
    """clean-fid's `InceptionV3W` (protocols `clean` and `legacy_tensorflow`), run in one pass."""

    def __init__(self, wrapper: nn.Module, protocol: Protocol, **kwargs: Any):
        super().__init__(wrapper, protocol, **kwargs)
        self._checked: set[tuple[int, int]] = set()  # input sizes verified against clean-fid

    def cleanfid_extractor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # cleanfid.features.feature_extractor("torchscript_inception"): model_fn(x) = model(x)
        return self.network

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor InceptionV3W gives `layers`, from clean-fid's inputs x [B, 3, h, w]."""
        if not self.spec.resize_inside:
            return (x - 128) / 128  # InceptionV3W.forward without resize_inside
        # The TorchScript forward's resize, operation for operation: an affine grid whose
        # translation makes grid_sample sample as TensorFlow's legacy bilinear resize does.
        batch, channels, height, width = x.shape
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2].add_(theta[0, 0] / width - theta[0, 0] / SIZE)
        theta[1, 2].add_(theta[1, 1] / height - theta[1, 1] / SIZE)
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch, 1, 1])
        grid = F.affine_grid(theta, [batch, channels, SIZE, SIZE], False)
        x = F.grid_sample(x, grid, "bilinear", "border", False)  # NCHW whatever x's layout
        return x.contiguous(memory_format=self.memory_format).sub_(128).div_(128)

    def _features(self, inputs: torch.Tensor) -> Features:
        base = self.network.base
        x = self._network_input(inputs)
        spatial = None
        for name, layer in base.layers.named_children():
            if name == "mixed_6":
                # ADM's mixed_6/conv: the block's 1x1 branch (conv, BN, ReLU), applied once more
                # to the block's input (~1% of the network's work) since a scripted block
                # offers no hook.
                spatial = layer.conv(x)
            x = layer(x)
        pool = x.reshape(-1, 2048).float()
        logits = F.linear(pool, base.output.weight)  # the forward's no_output_bias=True
        return Features(pool, _spatial(spatial), logits)

    def features_of(self, inputs: torch.Tensor, images_shape: torch.Size) -> Features:
        features = super().features_of(inputs, images_shape)
        self._check(inputs, (images_shape[-2], images_shape[-1]), features.pool)
        return features

    def _check(self, inputs: torch.Tensor, size: tuple[int, int], pool: torch.Tensor) -> None:
        """At each new size of the images, the first image's pool features against clean-fid's
        call (clean-fid's extractor on its inputs, which `inputs` are, image by image)."""
        if size in self._checked:
            return
        x = inputs[:1].to(self.device, memory_format=torch.contiguous_format)
        with torch.inference_mode():
            theirs = self.cleanfid_extractor()(x)
        # Bit-identical on a CPU with eval.channels_last off; channels-last kernels, and other
        # devices' per-call choices of algorithm, differ in round-off: float32 sums along the
        # ~49,000-term path to pool3 bound it at about 2e-5 of `scale` (tests'
        # `roundoff`; measured 4e-7 to 3e-6). A network of another structure differs by O(1)
        # of `scale`, so the check refuses beyond 1e-3: 50x the round-off, far below a mismatch.
        scale = max(theirs.abs().max().item(), 1e-12)
        if (pool[:1] - theirs).abs().max().item() > 1e-3 * scale:
            raise BenchError(
                f"{self.label}: the one-pass features of {size[1]}x{size[0]} images differ from "
                f"clean-fid's {self.spec.name} features of the same network (max difference "
                f"{(pool[:1] - theirs).abs().max().item():.3g}); this TorchScript file does not "
                "have the structure of inception-2015-12-05.pt, so no score is given"
            )
        self._checked.add(size)


class PortInception(InceptionEvaluator):
    """clean-fid's pytorch-fid port `InceptionV3` (protocol `legacy_pytorch`), one pass."""

    def __init__(self, state_dict: dict[str, torch.Tensor], protocol: Protocol, **kwargs: Any):
        super().__init__(cleanfid_port(state_dict), protocol, **kwargs)
        self.fc_weight = state_dict["fc.weight"].to(self.device)

    def cleanfid_extractor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # cleanfid.features.feature_extractor("pytorch_inception")'s model_fn
        return lambda x: self.network(x / 255)[0].squeeze(-1).squeeze(-1)

    def _features(self, inputs: torch.Tensor) -> Features:
        # ADM's mixed_6/conv is Mixed_6d.branch1x1, inside the port's third block; read on the
        # way by a hook that lives for this one call.
        captured = []
        branch = self.network.blocks[2][6].branch1x1
        handle = branch.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            pool = self.cleanfid_extractor()(inputs)
        finally:
            handle.remove()
        (mixed_6,) = captured
        return Features(pool, _spatial(mixed_6), F.linear(pool, self.fc_weight))


def cleanfid_port(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """clean-fid's `InceptionV3(output_blocks=[3], resize_input=False)` holding `state_dict`.

    Its `fid_inception_v3` fetches the weights with `load_state_dict_from_url`; that one call is
    answered with `state_dict` (already read and hash-checked here), so clean-fid's own
    architecture, strict loading and forward are what run.
    """
    from cleanfid import inception_pytorch

    def load(url: str, **kwargs: Any) -> dict[str, torch.Tensor]:
        if url != inception_pytorch.FID_WEIGHTS_URL:
            raise ValueError(f"clean-fid asked for unexpected weights: {url}")
        return state_dict

    try:
        with (
            mock.patch.object(inception_pytorch, "load_state_dict_from_url", load),
            _quiet_loaders(),
        ):
            return inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False).eval()
    except RuntimeError as err:
        raise MissingWeightsError(
            f"the Inception state dict does not fit the FID Inception architecture "
            f"({str(err).splitlines()[0]}); expected the keys of "
            f"{weights.entry('inception').filename}"
        ) from None


def cleanfid_torchscript(folder: Path, resize_inside: bool) -> nn.Module:
    """clean-fid's `InceptionV3W` loading `folder`/inception-2015-12-05.pt (no download)."""
    from cleanfid.inception_torchscript import InceptionV3W

    try:
        with _quiet_loaders():
            return InceptionV3W(str(folder), download=False, resize_inside=resize_inside).eval()
    except (RuntimeError, ValueError, OSError) as err:
        raise MissingWeightsError(
            f"{Path(folder) / TORCHSCRIPT_FILE} is not a loadable TorchScript Inception "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); delete it "
            "and run `bench weights fetch inception_torchscript`"
        ) from None


def load_inception_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read the port's state dict at `path` (tensors only: torch.load(weights_only=True))."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MissingWeightsError(
            f"{path} is not a readable Inception state dict ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); delete it and run "
            "`bench weights fetch inception`"
        ) from None
    if not isinstance(state_dict, dict):
        raise MissingWeightsError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict; delete it and run "
            "`bench weights fetch inception`"
        )
    return state_dict


def random_inception_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random state dict under the port's keys: for tests and smoke runs only.

    He-normal convolutions keep activations at unit scale through the 94 conv-BN-ReLU layers
    (BN at its identity init), so features are neither vanishing nor exploding.
    """
    with torch.device("meta"):  # no throwaway init, and the global RNG is left untouched
        net = _port_architecture()
    net = net.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5, generator=generator)
            nn.init.normal_(module.bias, std=1.0, generator=generator)  # IS must not use it
    return net.state_dict()


def _port_architecture() -> nn.Module:
    """`cleanfid.inception_pytorch.fid_inception_v3()`'s network, without loading weights."""
    from cleanfid import inception_pytorch as port

    net = port._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = port.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = port.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = port.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = port.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = port.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = port.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = port.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = port.FIDInceptionE_1(1280)
    net.Mixed_7c = port.FIDInceptionE_2(2048)
    return net


class _Mixed6(nn.Module):
    """A port Inception-C block under the TorchScript file's names: conv, tower, tower_1,
    tower_2 (mixed_6/conv is `conv`)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv = block.branch1x1
        self.tower = nn.Sequential(block.branch7x7_1, block.branch7x7_2, block.branch7x7_3)
        self.tower_1 = nn.Sequential(
            block.branch7x7dbl_1,
            block.branch7x7dbl_2,
            block.branch7x7dbl_3,
            block.branch7x7dbl_4,
            block.branch7x7dbl_5,
        )
        self.tower_2 = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), block.branch_pool
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class _TorchScriptStandIn(nn.Module):
    """The interface of inception-2015-12-05.pt (`layers` children by name, `output`, and
    forward(img, return_features, use_fp16, no_output_bias)) around the port's blocks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(
            OrderedDict(
                conv=net.Conv2d_1a_3x3,
                conv_1=net.Conv2d_2a_3x3,
                conv_2=net.Conv2d_2b_3x3,
                pool0=nn.MaxPool2d(3, stride=2),
                conv_3=net.Conv2d_3b_1x1,
                conv_4=net.Conv2d_4a_3x3,
                pool1=nn.MaxPool2d(3, stride=2),
                mixed=net.Mixed_5b,
                mixed_1=net.Mixed_5c,
                mixed_2=net.Mixed_5d,
                mixed_3=net.Mixed_6a,
                mixed_4=net.Mixed_6b,
                mixed_5=net.Mixed_6c,
                mixed_6=_Mixed6(net.Mixed_6d),
                mixed_7=net.Mixed_6e,
                mixed_8=net.Mixed_7a,
                mixed_9=net.Mixed_7b,
                mixed_10=net.Mixed_7c,
                pool2=nn.AvgPool2d(8, stride=8),
            )
        )
        self.output = net.fc

    def forward(
        self,
        img: torch.Tensor,
        return_features: bool = False,
        use_fp16: bool = False,
        no_output_bias: bool = False,
    ) -> torch.Tensor:
        batch, channels, height, width = img.shape
        x = img.to(torch.float16 if use_fp16 else torch.float32)
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2].add_(theta[0, 0] / width - theta[0, 0] / 299)
        theta[1, 2].add_(theta[1, 1] / height - theta[1, 1] / 299)
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch, 1, 1])
        grid = F.affine_grid(theta, [batch, channels, 299, 299], False)
        x = F.grid_sample(x, grid, "bilinear", "border", False)
        x = x.sub_(128).div_(128)
        features = self.layers(x).reshape(-1, 2048).to(torch.float32)
        if return_features:
            return features
        if no_output_bias:
            logits = F.linear(features, self.output.weight, None)
        else:
            logits = self.output(features)
        return F.softmax(logits, 1)


def torchscript_standin(seed: int = 0) -> torch.jit.ScriptModule:
    """A TorchScript module with inception-2015-12-05.pt's interface and seeded random weights.

    For tests and smoke runs only: the real file cannot be rebuilt from public code (it is
    NVIDIA's translation of the TensorFlow graph); this one has the same submodule names and
    forward signature, the FID Inception's architecture, and the port's random init.
    """
    with torch.device("meta"):
        net = _port_architecture()
    net.load_state_dict(random_inception_weights(seed), assign=True)
    with _quiet_loaders():
        return torch.jit.script(_TorchScriptStandIn(net.eval()).eval())


def inception_evaluator(
    protocol: str, path: Path, *, device: torch.device, weights_hash: str | None = None
) -> InceptionEvaluator:
    """The evaluator of `protocol` on the weights file at `path` (checked by the caller)."""
    spec = PROTOCOLS[protocol]
    weights_hash = weights_hash or weights.sha256(path)
    if spec.torchscript:
        if path.name != TORCHSCRIPT_FILE:
            raise MissingWeightsError(
                f"clean-fid loads the TorchScript Inception as {TORCHSCRIPT_FILE}, got {path}"
            )
        wrapper = cleanfid_torchscript(path.parent, spec.resize_inside)
        return TorchScriptInception(wrapper, spec, weights_hash=weights_hash, device=device)
    state_dict = load_inception_weights(path)
    return PortInception(state_dict, spec, weights_hash=weights_hash, device=device)


def random_inception(protocol: str, *, device: torch.device, seed: int = 0) -> InceptionEvaluator:
    """`protocol`'s evaluator on seeded random weights (smoke runs; labelled in every output)."""
    spec = PROTOCOLS[protocol]
    state_dict = random_inception_weights(seed)
    weights_hash = state_dict_sha256(state_dict)
    if not spec.torchscript:
        return PortInception(
            state_dict, spec, weights_hash=weights_hash, device=device, random_weights=True
        )
    with tempfile.TemporaryDirectory() as folder:  # through clean-fid's loader, as the file
        torchscript_standin(seed).save(str(Path(folder) / TORCHSCRIPT_FILE))
        wrapper = cleanfid_torchscript(Path(folder), spec.resize_inside)
    return TorchScriptInception(
        wrapper, spec, weights_hash=weights_hash, device=device, random_weights=True
    )


def build_inception(
    eval_cfg: EvalConfig, data_cfg: DataConfig, *, device: torch.device, cache_dir: Path
) -> InceptionEvaluator:
    """The inception evaluator of eval_cfg.protocol: its weights file (fetched and checked by
    casdm.weights), or random weights if asked for."""
    del data_cfg, cache_dir  # the same network for every dataset; nothing to cache
    protocol = eval_cfg.options.resolved.name
    if eval_cfg.random_weights:
        return random_inception(protocol, device=device)
    path = weights.ensure(PROTOCOLS[protocol].weights)
    return inception_evaluator(protocol, path, device=device)
