"""The evaluator contract: a frozen feature network mapping uint8 images to three feature kinds."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation.scores import display_name
from casdm import distributed
from casdm.config import DataConfig


class Features(NamedTuple):
    """One forward pass: pool (FID, KID, precision/recall), spatial (sFID), logits (IS)."""

    pool: torch.Tensor  # [B, D]
    spatial: torch.Tensor  # [B, S]
    logits: torch.Tensor  # [B, K]


class Evaluator:
    """A feature network in eval mode; `features` checks its input and never tracks gradients.

    `name` identifies the network and its protocol in caches ("inception:clean",
    "classifier:digits"), `title` is its display name ("Inception/clean"), `protocol` the
    scoring protocol it follows (an Inception protocol of clean-fid's, or "trained-classifier"),
    and `label` adds "(random weights)" whenever the weights are not the real ones, so that no
    printed number can pass for a real Inception score.

    Its work is two stages: `inputs` on the CPU (its `prepare`, e.g. clean-fid's per-image
    resize), which bench.evaluation.prefetch may run in worker processes ahead of the network,
    then `features_of` on the device. `features` runs both, in this process.
    """

    # The CPU stage: a picklable top-level function of uint8 CPU images [B, C, H, W] giving
    # the tensor `_features` takes (on the device); None: the images themselves.
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    # The network's memory layout (eval.channels_last, set by build_evaluator): NHWC, or NCHW
    # as clean-fid calls its network. Round-off apart, the same features.
    channels_last: bool = EvalConfig.channels_last
    # On a CPU, the most images one network call takes (None: the whole batch): a subclass
    # whose activations per image are large keeps each call's buffers small enough to be
    # reused by the allocator (see InceptionEvaluator). The features are the same, round-off
    # apart.
    cpu_chunk: int | None = None

    def __init__(
        self,
        network: nn.Module,
        *,
        name: str,
        title: str,
        weights_hash: str,
        dims: tuple[int, int, int],
        channels: tuple[int, ...],
        device: torch.device,
        protocol: str,
        random_weights: bool = False,
        files: tuple[Path, ...] = (),
    ):
        self.network = network.to(device).eval().requires_grad_(False)
        # Weights this machine built (a trained classifier's cache file): a study shares them
        # so that every worker scores with the same ones. Downloaded weights are checked by
        # hash instead and have none.
        self.files = files
        self.name = name
        self.title = title
        self.weights_hash = weights_hash
        self.dims = dims  # (pool D, spatial S, classes K)
        self.channels = channels  # channel counts the network accepts
        self.device = torch.device(device)
        self.protocol = protocol
        self.random_weights = random_weights

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the network's input (eval.channels_last)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def label(self) -> str:
        """Display name, e.g. "Inception/clean (random weights)", "classifier:digits"."""
        return self.title + (" (random weights)" if self.random_weights else "")

    def features(self, images: torch.Tensor) -> Features:
        """Features of a batch of uint8 images [B, C, H, W] in [0, 255]: both stages."""
        check_images(images, self.channels, self.label)
        return self.features_of(self.inputs(images), images.shape)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The CPU stage: `prepare` of checked uint8 images (the images themselves without one)."""
        return images if self.prepare is None else self.prepare(images.cpu())

    def features_of(self, inputs: torch.Tensor, images_shape: torch.Size) -> Features:
        """The device stage: features of `inputs(images)`, images of shape `images_shape`."""
        del images_shape  # for evaluators that check each input size (TorchScriptInception)
        # One layout whatever the strides the inputs come in (e.g. NHWC from an .npz, permuted),
        # since another would take other kernels and change the scores in the last digits. From
        # pinned memory (bench.evaluation.prefetch) the copy to a GPU runs asynchronously.
        inputs = inputs.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with torch.inference_mode():
            if self.device.type != "cpu" or self.cpu_chunk is None:
                return self._features(inputs)
            parts = [self._features(chunk) for chunk in inputs.split(self.cpu_chunk)]
            return Features(*(torch.cat(kind) for kind in zip(*parts, strict=True)))

    def _features(self, inputs: torch.Tensor) -> Features:
        """Features of `inputs` (`inputs(images)`, on the device, standard strides)."""
        raise NotImplementedError


def check_images(images: object, channels: tuple[int, ...], where: str) -> None:
    """Raise BenchError unless `images` is a non-empty uint8 tensor [B, C, H, W] with C allowed."""
    if not isinstance(images, torch.Tensor):
        raise BenchError(
            f"{where}: expected a uint8 image tensor [B, C, H, W], got {type(images).__name__}"
        )
    if images.dtype != torch.uint8:
        raise BenchError(
            f"{where}: expected uint8 images in [0, 255], got dtype {images.dtype}; convert "
            "images in [-1, 1] with casdm.data.to_uint8"
        )
    if images.ndim != 4 or images.shape[0] == 0:
        raise BenchError(
            f"{where}: expected a non-empty batch [B, C, H, W], got shape {tuple(images.shape)}"
        )
    if images.shape[1] not in channels:
        allowed = " or ".join(map(str, channels))
        raise BenchError(
            f"{where}: images have {images.shape[1]} channels (shape {tuple(images.shape)}); "
            f"this evaluator takes {allowed} channel(s) in NCHW layout"
        )


def score_label(name: str, evaluator: Evaluator) -> str:
    """A score's display name with the evaluator that produced it, e.g. "FID (Inception/clean)"."""
    suffix = ", random weights" if evaluator.random_weights else ""
    return f"{display_name(name)} ({evaluator.title}{suffix})"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 over the names and bytes of a state dict's tensors, in key order."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        digest.update(key.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


Builder = Callable[..., Evaluator]  # (eval_cfg, data_cfg, *, device, cache_dir) -> Evaluator


def build_evaluator(
    eval_cfg: EvalConfig, data_cfg: DataConfig, *, device: torch.device | str, cache_dir: Path
) -> Evaluator:
    """The EVALUATORS entry named by eval_cfg.evaluator, for `data_cfg`'s dataset.

    Under torchrun rank 0 builds it first (training the classifier or fetching weights into
    `cache_dir`); the other ranks then load what it cached.
    """
    build: Builder = eval_cfg.component.load()
    evaluator = distributed.main_first(
        lambda: build(eval_cfg, data_cfg, device=torch.device(device), cache_dir=Path(cache_dir))
    )
    evaluator.channels_last = eval_cfg.channels_last
    return evaluator
