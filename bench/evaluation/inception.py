"""The FID Inception (TF 2015-12-05) as clean-fid ships it, with ADM's three feature heads.

Architecture: `cleanfid.inception_pytorch.fid_inception_v3` (pytorch-fid's port): torchvision's
Inception v3 with 1008 classes and the TF-patched blocks. That builder downloads its weights
itself, so the same architecture is built here without weights and the state dict is loaded
strictly, from the hub file (`casdm.weights`) or from a seeded random init for smoke runs.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import EvalConfig
from bench.evaluation.evaluator import Evaluator, Features, state_dict_sha256
from bench.evaluation.resize import clean_resize
from casdm import weights
from casdm.config import DataConfig
from casdm.errors import MissingWeightsError

SIZE = 299  # the network's input resolution
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 channels of mixed_6/conv: 17 * 17 * 7 = 2023
DIMS = (2048, 17 * 17 * SPATIAL_CHANNELS, 1008)

# pytorch-fid's forward order (its InceptionV3 blocks 0-3), ending in the 2048-d pool3 features.
_TRUNK = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "avgpool",
)


def inception_architecture() -> nn.Module:
    """`cleanfid.inception_pytorch.fid_inception_v3()` without its weight download."""
    # Imported here: it imports torchvision, seconds that commands never building it would pay.
    from cleanfid import inception_pytorch as cleanfid_inception

    net = cleanfid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = cleanfid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = cleanfid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = cleanfid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = cleanfid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = cleanfid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = cleanfid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = cleanfid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = cleanfid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = cleanfid_inception.FIDInceptionE_2(2048)
    return net


def inception_network(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The FID Inception holding `state_dict` (strict: every official key, nothing else)."""
    with torch.device("meta"):  # no throwaway init, and the global RNG is left untouched
        net = inception_architecture()
    try:
        net.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise MissingWeightsError(
            f"the Inception state dict does not fit the FID Inception architecture "
            f"({str(err).splitlines()[0]}); expected the keys of "
            f"{weights.entry('inception').filename}"
        ) from None
    return net.eval()


def load_inception_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read the Inception state dict at `path` (tensors only: torch.load(weights_only=True))."""
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
    """A seeded random state dict under the official keys: for tests and smoke runs only.

    He-normal convolutions keep activations at unit scale through the 94 conv-BN-ReLU layers
    (BN at its identity init), so features are neither vanishing nor exploding.
    """
    with torch.device("meta"):
        net = inception_architecture()
    net = net.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5, generator=generator)
            nn.init.zeros_(module.bias)
    return net.state_dict()


class InceptionEvaluator(Evaluator):
    """FID Inception features after clean-fid's clean resize; inputs uint8, 1 or 3 channels."""

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        *,
        weights_hash: str,
        device: torch.device,
        random_weights: bool = False,
    ):
        super().__init__(
            inception_network(state_dict),
            name="inception",
            title="Inception",
            weights_hash=weights_hash,
            dims=DIMS,
            channels=(1, 3),
            device=device,
            random_weights=random_weights,
        )
        # channels-last convolutions are faster on CPU (oneDNN) and GPU (cuDNN) alike.
        self.network = self.network.to(memory_format=torch.channels_last)

    def _features(self, images: torch.Tensor) -> Features:
        net = self.network
        x = clean_resize(images.float().expand(-1, 3, -1, -1), SIZE)  # [B, 3, 299, 299]
        x = 2 * (x / 255) - 1  # clean-fid's legacy_pytorch path: x / 255, then 2x - 1
        x = x.contiguous(memory_format=torch.channels_last)
        spatial = None
        for name in _TRUNK:
            if name == "Mixed_6d":
                # ADM's mixed_6/conv is Mixed_6d.branch1x1 (conv, BN, ReLU): [B, 192, 17, 17].
                # Applied once more to Mixed_6d's input (a 1x1 conv, ~1% of the network's
                # work) rather than captured by a hook, so that this forward keeps no state.
                spatial = net.Mixed_6d.branch1x1(x)
            x = getattr(net, name)(x)
        pool = torch.flatten(x, 1)  # [B, 2048]
        # ADM's layout: first 7 channels, flattened channels-last (NHWC), 17 * 17 * 7 = 2023.
        spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        logits = F.linear(pool, net.fc.weight)  # [B, 1008]; without the bias, as ADM's IS
        return Features(pool, spatial, logits)


def build_inception(
    eval_cfg: EvalConfig, data_cfg: DataConfig, *, device: torch.device, cache_dir: Path
) -> InceptionEvaluator:
    """The inception evaluator: the hub file (hash-checked), or random weights if asked for."""
    del data_cfg, cache_dir  # the same network for every dataset; nothing to cache
    if eval_cfg.random_weights:
        state_dict = random_inception_weights()
        return InceptionEvaluator(
            state_dict,
            weights_hash=state_dict_sha256(state_dict),
            device=device,
            random_weights=True,
        )
    path = weights.ensure("inception")
    return InceptionEvaluator(
        load_inception_weights(path), weights_hash=weights.sha256(path), device=device
    )
