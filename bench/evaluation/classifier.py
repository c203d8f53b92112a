"""A small CNN trained on the dataset's labels: the evaluator where Inception means nothing.

For 8x8 digits, ImageNet features are meaningless, so FID/sFID/IS are computed on the features of
a classifier trained here, deterministically (fixed seed, fixed steps, on the CPU), on the labeled
train split; its accuracy on the test split is recorded. The trained weights are cached in
`cache_dir` under a key of (dataset, resolution, ClassifierConfig), as a plain-state checkpoint.
"""

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation.evaluator import Evaluator, Features, state_dict_sha256
from bench.evaluation.evaluators import CLASSIFIER_PROTOCOL
from casdm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from casdm.config import DataConfig
from casdm.data import from_uint8, load_dataset

FORMAT = 1  # bump when the network or its training changes: old cache files are then unused
SPATIAL_CHANNELS = 8  # the mid-level map keeps its first 8 channels, as ADM's sFID keeps 7
SPATIAL_SIZE = 8  # ... pooled to at most 8x8, so sFID stays <= 512-d at any resolution


@dataclass(frozen=True)
class ClassifierConfig:
    """The classifier's width and its (deterministic) training recipe."""

    width: int = 24
    hidden: int = 128
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    # Augmentation: random translations by up to this fraction of the image side, floored
    # (8px: none, 16px: 1 pixel, 32px: 2 pixels).
    max_shift: float = 1 / 16


class SmallCNN(nn.Module):
    """conv -> pool -> conv (mid-level map) -> pool -> conv -> 4x4 pool -> hidden -> logits."""

    def __init__(self, channels: int, classes: int, cfg: ClassifierConfig):
        super().__init__()
        w = cfg.width
        # Only the first, cheap convolution runs at full resolution: training stays seconds.
        self.early = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
        )
        self.trunk = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(4 * w * 16, cfg.hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(cfg.hidden, classes)
        # The hidden features are divided by their RMS over the training set (set after
        # training), as Inception's pool3 features are O(1): KID's cubic kernel (x.y / D + 1)^3
        # then stays O(1) too, instead of growing with the arbitrary scale ReLU features reach.
        self.register_buffer("pool_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> Features:
        """x: [B, C, H, W] in [-1, 1] -> pool [B, hidden], spatial [B, <= 512], logits [B, K]."""
        early = self.early(x)  # [B, 2w, H/2, W/2]: the mid-level map, as ADM's mixed_6/conv
        hidden = self.trunk(early)  # [B, hidden]
        size = min(early.shape[-1], SPATIAL_SIZE)  # pool down, never up (no duplicated dims)
        spatial = F.adaptive_avg_pool2d(early[:, :SPATIAL_CHANNELS], size)
        spatial = spatial.permute(0, 2, 3, 1).flatten(1)  # channels-last, as ADM's sFID
        return Features(hidden / self.pool_scale, spatial, self.head(hidden))


class ClassifierEvaluator(Evaluator):
    """The features of a SmallCNN trained on one dataset, at that dataset's resolution."""

    def __init__(
        self,
        network: SmallCNN,
        *,
        dataset: str,
        resolution: int,
        channels: int,
        accuracy: float,
        device: torch.device,
        files: tuple[Path, ...] = (),
    ):
        with torch.no_grad():
            probe = network(torch.zeros(1, channels, resolution, resolution))
        super().__init__(
            network,
            name=f"classifier:{dataset}",
            title=f"classifier:{dataset}",
            weights_hash=state_dict_sha256(network.state_dict()),
            dims=tuple(f.shape[1] for f in probe),
            channels=(channels,),
            device=device,
            protocol=CLASSIFIER_PROTOCOL,
            files=files,
        )
        self.resolution = resolution
        self.accuracy = accuracy  # on the dataset's test split

    def _features(self, images: torch.Tensor) -> Features:
        if images.shape[-2:] != (self.resolution, self.resolution):
            raise BenchError(
                f"{self.label} was trained on {self.resolution}x{self.resolution} images, got "
                f"{images.shape[-2]}x{images.shape[-1]}; score samples at the dataset's resolution"
            )
        return self.network(from_uint8(images))


def _shift(x: torch.Tensor, max_shift: float, generator: torch.Generator) -> torch.Tensor:
    """Translate the batch by up to max_shift * side pixels, padding with -1 (the background)."""
    size = x.shape[-1]
    max_shift = int(max_shift * size)
    if max_shift == 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + size, dx : dx + size]


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, classes: int, cfg: ClassifierConfig
) -> SmallCNN:
    """Train a SmallCNN on [-1, 1] images with cross-entropy (Adam); deterministic on the CPU."""
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = SmallCNN(images.shape[1], classes, cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    threads = torch.get_num_threads()
    # Convolutions this small run several times slower when split across (busy) threads; one
    # thread also fixes the reduction order, so the result does not depend on the machine.
    torch.set_num_threads(1)
    try:
        for _ in range(cfg.steps):
            batch = torch.randint(0, len(images), (cfg.batch_size,), generator=generator)
            x = _shift(images[batch], cfg.max_shift, generator)
            loss = F.cross_entropy(net(x).logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.inference_mode():
        hidden = torch.cat([net(x).pool for x in images.split(500)])  # scale still 1
    net.pool_scale.fill_(hidden.pow(2).mean().sqrt().item())
    return net


def accuracy(net: SmallCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `images` whose argmax logit is the label."""
    with torch.inference_mode():
        predictions = torch.cat([net(x).logits.argmax(1) for x in images.split(500)])
    return (predictions == labels).float().mean().item()


def _labeled(data_cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images as the evaluator will see them (through uint8) and its labels."""
    data = load_dataset(data_cfg, split)
    if data.labels is None:
        raise BenchError(
            f"the classifier evaluator trains on labels, and dataset {data_cfg.dataset!r} has "
            "none; use --evaluator inception (eval.evaluator = 'inception')"
        )
    return data.images, data.labels


def build_classifier(
    eval_cfg: EvalConfig,
    data_cfg: DataConfig,
    *,
    device: torch.device,
    cache_dir: Path,
    cfg: ClassifierConfig = ClassifierConfig(),  # frozen, so one shared default is safe
) -> ClassifierEvaluator:
    """The classifier for `data_cfg`, from the cache or trained now (then cached)."""
    # random_weights concerns pretrained networks; this one is always trained here.
    key = {
        "format": FORMAT,
        "dataset": data_cfg.dataset,
        "resolution": data_cfg.resolution,
        "config": dataclasses.asdict(cfg),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in data_cfg.dataset)[:40]
    path = Path(cache_dir) / "classifier" / f"{slug}-{data_cfg.resolution}px-{digest}.pt"
    cached = _read_cache(path, key, cfg)
    if cached is None:
        images, labels = _labeled(data_cfg, "train")
        classes = int(labels.max()) + 1
        net = train_classifier(images, labels, classes, cfg)
        test_images, test_labels = _labeled(data_cfg, "test")
        meta = {
            **key,
            "channels": images.shape[1],
            "classes": classes,
            "accuracy": accuracy(net, test_images, test_labels),
            "train_images": len(images),
            "test_images": len(test_images),
        }
        save_checkpoint(path, {"state_dict": net.state_dict(), "meta": json.dumps(meta)})
    else:
        net, meta = cached
    return ClassifierEvaluator(
        net,
        dataset=data_cfg.dataset,
        resolution=data_cfg.resolution,
        channels=meta["channels"],
        accuracy=meta["accuracy"],
        device=device,
        files=(path,),
    )


def _read_cache(path: Path, key: dict, cfg: ClassifierConfig) -> tuple[SmallCNN, dict] | None:
    """The cached network and its metadata if intact and made for `key`; None (retrain) if not."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
        meta = json.loads(state["meta"])
        if {k: meta.get(k) for k in key} != key:
            raise CheckpointError(f"it was made for {meta}, not {key}")
        net = SmallCNN(meta["channels"], meta["classes"], cfg)
        net.load_state_dict(state["state_dict"])
    except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as err:
        warnings.warn(f"classifier cache {path} is unusable ({err}); retraining", stacklevel=3)
        return None
    return net.eval(), meta
