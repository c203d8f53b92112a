"""One trial, composed in one place: data, schedule, model, metric, training, sampling, scoring.

`run_trial` is the objective of every study; `bench train` and `bench sample` reuse its pieces
(`train_run`, `sample`, `save_samples`, `load_trained`) so nothing is composed twice.
A trial's folder holds config.json, checkpoint.pt (resumed from if present; checkpoint.prev.pt,
the one before), samples.png (a grid of the first 64 samples), samples.npz (every sample, ADM
layout: `arr_0`, uint8, NHWC) and samples.json (the checkpoint they came from: a trial stopped
while scoring reuses them instead of sampling again).
"""

import dataclasses
import json
import math
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.config import RunConfig, portable_dict
from bench.errors import BenchError
from bench.progress import QuietProgress
from casdm import distributed, faults, weights
from casdm.architectures import build_model, count_parameters
from casdm.checkpoint import CheckpointError, load_checkpoint
from casdm.config import ConfigError, SampleConfig, from_dict, to_dict
from casdm.data import load_dataset, save_grid_png, save_npz, to_uint8
from casdm.files import atomic_write_text, remove_stale_temps
from casdm.metrics import build_metric
from casdm.samplers import generate
from casdm.schedule import Schedule
from casdm.train import TrainResult, train

DEFAULT_CACHE = Path("results") / "cache"  # evaluator and reference-statistics caches
GRID_IMAGES = 64  # samples shown in samples.png (8 x 8)
OnTrain = Callable[[Mapping[str, float]], None]


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; any other torch device string as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(
            f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {name!r} asked for CUDA, which this machine lacks; use cpu")
    return device


def config_document(config: RunConfig, image_shape: tuple[int, int, int]) -> str:
    """config.json (also stored in the checkpoint): the RunConfig and the image shape (C, H, W)."""
    return json.dumps({"config": to_dict(config), "image_shape": list(image_shape)}, indent=2)


def read_config_document(text: str, where: str) -> tuple[RunConfig, tuple[int, int, int]]:
    """Parse config_document's JSON back into (RunConfig, image shape); `where` names the file."""
    try:
        doc = json.loads(text)
        config = from_dict(RunConfig, doc["config"])
        channels, height, width = (int(v) for v in doc["image_shape"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(
            f"{where} does not hold a casdm-bench run config ({type(err).__name__}: {err}); "
            "it was not written by `bench run` or `bench train`"
        ) from None
    return config, (channels, height, width)


class PeakMemory:
    """Peak memory of a trial: CUDA's max allocated bytes, or the process's max RSS on the CPU.

    The CPU figure (ru_maxrss) is a high-water mark of the whole process, so in a worker that
    runs several trials it never goes down; `kind` says which one was measured.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_process_max_rss"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def megabytes(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB


@dataclass
class Trained:
    """A model ready to sample: its EMA weights, schedule, image shape (C, H, W) and size."""

    config: RunConfig
    ema: nn.Module
    schedule: Schedule
    image_shape: tuple[int, int, int]
    device: torch.device
    num_params: int  # trainable parameters of the model (both networks of Cas-DM)


def train_run(
    config: RunConfig,
    workdir: Path,
    *,
    progress: QuietProgress | None = None,
    on_train: OnTrain | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> tuple[Trained, TrainResult]:
    """Train `config` in `workdir` (config.json, checkpoint.pt; resumes from the checkpoint).

    `on_notice` hears about unreadable checkpoints and what was done instead (default: a
    warning), and about temporary files a killed writer left behind (deleted).
    """
    progress = progress or QuietProgress()
    device = resolve_device(config.device)
    data = load_dataset(config.data, "train")
    image_shape = tuple(data.pixels.shape[1:])  # (C, H, W)
    schedule = Schedule.from_config(config.diffusion)
    # The initial weights (and a random LPIPS trunk) come from the run's seed alone, not from
    # whatever the process drew before, so a trial is reproducible in any process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(
            config.architecture, config.model, schedule, image_shape[0], image_shape[1]
        )
        metric = build_metric(config.metric, image_shape)
    document = config_document(config, image_shape)
    checkpoint = workdir / "checkpoint.pt"
    if distributed.is_main():
        stale = remove_stale_temps(checkpoint)
        if stale and on_notice is not None:
            on_notice(f"deleted {len(stale)} partly written checkpoint file(s) of a killed run")
        atomic_write_text(workdir / "config.json", document)

    def callback(record: Mapping[str, float]) -> None:
        progress.train(record)
        if on_train is not None:
            on_train(record)

    result = train(
        model,
        metric,
        data.pixels,
        config.train,
        seed=config.seed,
        device=device,
        checkpoint_path=checkpoint,
        config_json=document,
        callback=callback,
        on_notice=on_notice,
    )
    trained = Trained(config, result.ema, schedule, image_shape, device, count_parameters(model))
    return trained, result


def load_trained(checkpoint: Path, device: str = "auto") -> Trained:
    """The EMA model of a checkpoint written by train_run, rebuilt from its config JSON."""
    state = load_checkpoint(checkpoint)
    if "config" not in state or "ema" not in state:
        raise CheckpointError(
            f"checkpoint {checkpoint} has no config or EMA weights; pass the checkpoint.pt of "
            "a `bench run` trial or a `bench train` run"
        )
    config, image_shape = read_config_document(state["config"], f"checkpoint {checkpoint}")
    schedule = Schedule.from_config(config.diffusion)
    model = build_model(config.architecture, config.model, schedule, image_shape[0], image_shape[1])
    try:
        model.load_state_dict(state["ema"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {checkpoint}: the EMA weights do not fit the model its config "
            f"describes ({str(err).splitlines()[0]})"
        ) from None
    num_params = count_parameters(model)
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    return Trained(config, model, schedule, image_shape, torch_device, num_params)


def sample(
    trained: Trained, cfg: SampleConfig | None = None, *, progress: QuietProgress | None = None
) -> torch.Tensor:
    """Samples [N, C, H, W] in [-1, 1] from the EMA weights, with `cfg` or the run's sampling."""
    progress = progress or QuietProgress()
    return generate(
        trained.ema,
        trained.schedule,
        cfg or trained.config.sample,
        trained.image_shape,
        seed=trained.config.seed,
        device=trained.device,
        progress=progress.task("sampling"),
    )


def save_samples(samples: torch.Tensor, grid_png: Path, npz: Path | None) -> None:
    """The first GRID_IMAGES samples as a PNG grid, and every sample as an ADM .npz if asked."""
    grid = samples[:GRID_IMAGES]
    save_grid_png(grid_png, grid, nrow=math.ceil(math.sqrt(grid.shape[0])))
    if npz is not None:
        save_npz(npz, to_uint8(samples))


def saved_samples(workdir: Path, checkpoint: Path, count: int) -> torch.Tensor | None:
    """The uint8 samples [N, C, H, W] a stopped run of this trial saved, or None.

    Only when samples.json vouches that samples.npz was drawn from exactly this checkpoint
    (its SHA-256) and holds `count` samples, and in a single process (under torchrun every
    rank resamples).
    """
    if distributed.world_size() > 1:
        return None
    try:
        record = json.loads((workdir / "samples.json").read_text())
        if record["checkpoint_sha256"] != weights.sha256(checkpoint):
            return None
        with np.load(workdir / "samples.npz", allow_pickle=False) as npz:
            images = torch.from_numpy(npz["arr_0"]).permute(0, 3, 1, 2)  # NHWC -> NCHW view
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None  # absent, or damaged: sample again
    return images if len(images) == count and images.dtype == torch.uint8 else None


class Scorer:
    """Evaluators and reference statistics, built once per (eval, data) config and reused.

    Building an evaluator checks (or downloads) its weights and may train the classifier, and
    the reference statistics take a pass over the reference split: both are cached on disk in
    `cache_dir` by bench.evaluation, and in memory here for the trials of one process.

    An evaluator build (`build`: its weights' and reference statistics' hashes) is bit-identical
    on one machine, but a classifier trained, or statistics computed, on another CPU or GPU
    differ in the last bits. A study therefore shares one build (bench.worker): `files` are what
    a worker publishes, `adopt` takes a published build into this cache.
    """

    def __init__(self, cache_dir: Path, device: torch.device):
        self.cache_dir = cache_dir
        self.device = device
        self._prepared: dict[str, tuple[Any, Any]] = {}

    def prepare(self, config: RunConfig, progress: QuietProgress | None = None) -> tuple[Any, Any]:
        """(evaluator, reference statistics) for `config`'s eval and data settings."""
        from bench.evaluation import build_evaluator, reference_statistics

        progress = progress or QuietProgress()
        key = self.key(config)
        if key not in self._prepared:
            evaluator = build_evaluator(
                config.eval, config.data, device=self.device, cache_dir=self.cache_dir
            )
            reference = reference_statistics(
                evaluator,
                config.data,
                config.eval,
                cache_dir=self.cache_dir,
                progress=progress.task("reference features"),
            )
            self._prepared[key] = (evaluator, reference)
        return self._prepared[key]

    @staticmethod
    def key(config: RunConfig) -> str:
        """What identifies an evaluator build: the eval and data settings (as JSON), without the
        machine-local ones (bench.config.portable_dict)."""
        document = portable_dict(config)
        return json.dumps([document["eval"], document["data"]], sort_keys=True)

    def build(self, config: RunConfig) -> dict[str, str]:
        """{"evaluator", "weights_sha256", "reference_sha256"} of `config`'s evaluator build."""
        evaluator, reference = self.prepare(config)
        return {
            "evaluator": evaluator.label,
            "weights_sha256": evaluator.weights_hash,
            "reference_sha256": reference.sha256(),
        }

    def files(self, config: RunConfig) -> list[str]:
        """The cache files making up `config`'s build, relative to cache_dir (weights built
        here, reference statistics); downloaded weights are not among them."""
        evaluator, reference = self.prepare(config)
        paths = [*evaluator.files, *([reference.path] if reference.path else [])]
        root = self.cache_dir.resolve()
        return [Path(p).resolve().relative_to(root).as_posix() for p in paths]

    def adopt(self, config: RunConfig, folder: Path, files: list[str]) -> None:
        """Copy a published build's `files` (under `folder`) into the cache and use them."""
        import shutil

        for name in files:
            target = self.cache_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, target.with_name(target.name + ".adopting"))
            (target.with_name(target.name + ".adopting")).replace(target)
        self.forget()

    def forget(self) -> None:
        """Drop the evaluators held in memory: the next `prepare` reads the cache again."""
        self._prepared.clear()

    def label(self, config: RunConfig) -> str:
        """The evaluator's label ("classifier:digits", "... (random weights)")."""
        return self.prepare(config)[0].label

    @staticmethod
    def protocols(config: RunConfig) -> dict[str, str]:
        """{score key: the protocol it follows} for `config`'s eval settings."""
        from bench.evaluation import protocols

        return protocols(config.eval.is_protocol, config.eval.is_splits)

    def score(
        self,
        images: torch.Tensor,
        config: RunConfig,
        progress: QuietProgress | None = None,
        *,
        bootstrap: bool = False,
    ) -> dict[str, float]:
        """Every registered score of uint8 images [N, C, H, W]; with `bootstrap` also the
        "bootstrap.*" standard errors (eval.bootstrap resamples)."""
        from bench.evaluation import score

        progress = progress or QuietProgress()
        evaluator, reference = self.prepare(config, progress)
        return score(
            images,
            evaluator,
            reference,
            is_protocol=config.eval.is_protocol,
            is_splits=config.eval.is_splits,
            batch_size=config.eval.batch_size,
            prep_workers=config.eval.prep_workers,
            progress=progress.task("features"),
            bootstrap=config.eval.bootstrap if bootstrap else 0,
        )

    def score_real_data(
        self, config: RunConfig, progress: QuietProgress | None = None
    ) -> dict[str, float]:
        """The floor a perfect model reaches: held-out real images scored like the samples.

        The held-out split is the one the reference statistics do not use, capped at
        num_samples images so the comparison is at the samples' N (FID depends on N).
        """
        held_out = "test" if config.eval.reference_split == "train" else "train"
        pixels = load_dataset(config.data, held_out).pixels[: config.sample.num_samples]
        return self.score(pixels, config, progress)


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial produced: its scores, costs and files."""

    scores: dict[str, float]  # score name -> value (bench.evaluation.scores)
    evaluator: str  # the evaluator's label, e.g. "classifier:digits (random weights)"
    protocols: dict[str, str]  # score key -> the protocol it follows (Scorer.protocols)
    evaluator_build: dict[str, str]  # Scorer.build: the hashes of the weights and reference
    wall_s: float  # the whole trial: training, sampling, scoring
    train_wall_s: float
    images_per_s: float  # training throughput
    peak_memory_mb: float
    peak_memory_kind: str  # "cuda_max_allocated" or "cpu_process_max_rss"
    num_params: int
    resumed_from: int | None
    workdir: Path
    config_json: Path
    checkpoint: Path
    grid_png: Path
    samples_npz: Path
    # bench.evaluation.bootstrap's standard errors, e.g. {"bootstrap.fid.se": 0.31, ...}
    bootstrap: dict[str, float] = dataclasses.field(default_factory=dict)
    sample_s: float | None = None  # sampling wall-clock; None when saved samples were reused
    num_samples: int = 0
    nfe: int = 0  # network evaluations per sample
    processes: int = 1  # torchrun ranks, one device each

    def cost(self) -> dict[str, float | None]:
        """The trial's bench.costs.COSTS entries (stored as the "cost" user attr)."""
        per_1k = None
        if self.sample_s is not None and self.num_samples:
            per_1k = self.sample_s * 1000 / self.num_samples
        return {
            "params_m": self.num_params / 1e6,
            "train_images_per_s": self.images_per_s,
            "train_hours": self.train_wall_s / 3600,
            "device_hours": self.train_wall_s / 3600 * self.processes,
            "sample_s_per_1k": per_1k,
            "nfe": self.nfe,
            "peak_memory_mb": self.peak_memory_mb,
        }


def run_trial(
    config: RunConfig,
    workdir: Path,
    *,
    progress: QuietProgress | None = None,
    on_train: OnTrain | None = None,
    on_notice: Callable[[str], None] | None = None,
    scorer: Scorer | None = None,
) -> TrialOutcome:
    """Train, sample with the EMA weights, score against the reference; write the trial folder.

    Under torchrun every rank trains, samples and scores its share (casdm.distributed,
    bench.evaluation) and returns the same scores; rank 0 alone writes the files.
    """
    start = time.perf_counter()
    progress = progress or QuietProgress()
    device = resolve_device(config.device)
    scorer = scorer or Scorer(DEFAULT_CACHE, device)
    memory = PeakMemory(device)
    trained, result = train_run(
        config, workdir, progress=progress, on_train=on_train, on_notice=on_notice
    )
    checkpoint = workdir / "checkpoint.pt"
    images = saved_samples(workdir, checkpoint, config.sample.num_samples)
    sample_s = None
    if images is not None:
        (on_notice or progress.log)(
            f"reusing the {len(images)} samples in samples.npz, drawn from this checkpoint "
            "before the run was stopped"
        )
    else:
        faults.inject("sample")
        sample_start = time.perf_counter()
        samples = sample(trained, progress=progress)  # [N, C, H, W] in [-1, 1], on every rank
        sample_s = time.perf_counter() - sample_start
        images = to_uint8(samples)
        if distributed.is_main():
            save_samples(samples, workdir / "samples.png", workdir / "samples.npz")
            record = {"checkpoint_sha256": weights.sha256(checkpoint)}
            atomic_write_text(workdir / "samples.json", json.dumps(record))
    faults.inject("score")
    scores = scorer.score(images, config, progress, bootstrap=True)
    # The sampling uncertainty is stored apart from the scores (user attr "bootstrap").
    bootstrap = {k: scores.pop(k) for k in list(scores) if k.startswith("bootstrap.")}
    return TrialOutcome(
        scores=scores,
        evaluator=scorer.label(config),
        protocols=scorer.protocols(config),
        evaluator_build=scorer.build(config),
        wall_s=time.perf_counter() - start,
        train_wall_s=result.wall_s,
        images_per_s=result.images_per_s,
        peak_memory_mb=memory.megabytes(),
        peak_memory_kind=memory.kind,
        num_params=trained.num_params,
        resumed_from=result.resumed_from,
        workdir=workdir,
        config_json=workdir / "config.json",
        checkpoint=workdir / "checkpoint.pt",
        grid_png=workdir / "samples.png",
        samples_npz=workdir / "samples.npz",
        bootstrap=bootstrap,
        sample_s=sample_s,
        num_samples=config.sample.num_samples,
        nfe=config.sample.component.network_evaluations(config.sample.options, config.sample.steps),
        processes=distributed.world_size(),
    )
