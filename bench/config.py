"""The whole run configuration: casdm's concerns plus evaluation, composed into one RunConfig."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import bench.evaluation  # noqa: F401  (defines the evaluator and score component kinds)
from casdm.components import Shape
from casdm.config import (
    ArchitectureConfig,
    Choice,
    DataConfig,
    DiffusionConfig,
    MetricConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    check,
    from_dict_checked,
    to_dict,
)


@dataclass(frozen=True, init=False)
class EvalConfig(Choice):
    """How samples are scored: an evaluator name and its options (bench.evaluation.evaluators:
    inception takes protocol), and the reference set."""

    kind: ClassVar[str] = "evaluator"
    selector: ClassVar[str] = "evaluator"
    evaluator: str = "classifier"
    # Reference statistics come from this split of the dataset; the table's "real data" row
    # scores the other (held-out) split against them.
    reference_split: Literal["train", "test"] = "train"
    # Cap on reference images (0: the whole split).
    reference_images: int = 0
    # A reference to use instead of the dataset split ("" for none): a folder of images (all of
    # them, in file order: the reference of clean-fid's compute_fid(samples, folder)) or an ADM
    # reference batch .npz.
    reference: str = ""
    batch_size: int = 100
    # Inception Score protocol: "adm" (guided-diffusion's evaluator: consecutive chunks of
    # 5,000 samples, what diffusion papers report) or "torch-fidelity" (is_splits shuffled
    # splits, its defaults).
    is_protocol: Literal["adm", "torch-fidelity"] = "adm"
    is_splits: int = 10  # the number of splits of is_protocol = "torch-fidelity"
    # Random feature-network weights: tests and smoke runs only, labelled in every output.
    random_weights: bool = False
    # Bootstrap resamples of each trial's samples for the sampling uncertainty of the scores
    # (bench.evaluation.bootstrap): 0 none, -1 automatic (100 up to 512 feature dims, else 20).
    bootstrap: int = -1
    # Worker processes running the evaluator's CPU preprocessing (clean-fid's per-image resize)
    # ahead of its network (bench.evaluation.prefetch): 0 none (in-process), -1 automatic
    # (CUDA: min(8, available cores - 1); CPU: 0). Never changes a score.
    prep_workers: int = -1
    # The feature network's memory layout: channels-last (NHWC convolution and pooling
    # kernels; on a CPU the Inception pass is about 1.4x faster), or false: NCHW, the layout
    # clean-fid feeds its network, so that on a CPU our features equal clean-fid's bit for bit.
    # The two differ in round-off only (pool features by about 1e-6 of their largest value),
    # as devices and thread counts do.
    channels_last: bool = True
    options: Any = None

    # Settings of how this machine computes the scores, never of what they are (round-off
    # apart, as the device): left out of the digests that identify a configuration or an
    # evaluator build (`portable_dict`).
    machine_local: ClassVar[tuple[str, ...]] = ("prep_workers", "channels_last")

    def __post_init__(self):
        check(self.reference_images >= 0, "reference_images", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.is_splits >= 1, "is_splits", "must be >= 1")
        check(self.bootstrap >= -1, "bootstrap", "must be >= 0 (resamples), or -1 (automatic)")
        check(
            self.prep_workers >= -1,
            "prep_workers",
            f"must be >= 0 (worker processes), or -1 (automatic), got {self.prep_workers}",
        )
        check(
            self.is_protocol == "torch-fidelity" or self.is_splits == 10,
            "is_splits",
            f"sets the splits of is_protocol = 'torch-fidelity', got {self.is_splits} with "
            "is_protocol = 'adm', whose parts are consecutive chunks of 5,000 samples; set "
            "eval.is_protocol = 'torch-fidelity' to score with is_splits splits",
        )


@dataclass(frozen=True)
class RunConfig:
    """One trial: every concern of a run, with `seed` driving every torch.Generator."""

    seed: int = 0
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(
            self.sample.steps <= self.diffusion.timesteps,
            "sample.steps",
            f"must be <= diffusion.timesteps ({self.diffusion.timesteps}), got {self.sample.steps}",
        )

    def components(self) -> dict[str, Choice]:
        """{section: its component choice}: data, architecture, metric, sample, eval."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Choice)
        }

    def validate(self, channels: int | None = None) -> None:
        """The cross checks that would otherwise fail only after training starts: the UNet's
        shape rules, and every component's `validate` hook on the run's images (`channels`
        None: not known before the dataset is loaded; checked again when the trial builds its
        model). ConfigError with the whole key path (e.g. "metric.min_size")."""
        resolution = self.data.resolution
        self.model.check_resolution(resolution)
        shape = Shape(channels, resolution, resolution)
        for section, choice in self.components().items():
            from_dict_checked(
                type(choice),
                section,
                lambda choice=choice: choice.component.validate(choice.options, shape, self),
            )

    def required_weights(self) -> list[str]:
        """casdm.weights names every component of this run needs (pretrained ones), sorted.

        The evaluator's are left out under eval.random_weights."""
        names = set()
        for section, choice in self.components().items():
            if section == "eval" and self.eval.random_weights:
                continue
            names.update(choice.component.required_weights(choice.options))
        return sorted(names)

    def caveats(self) -> list[str]:
        """Sentences every table and report of this run must carry (e.g. a random LPIPS
        trunk), from its components, in section order."""
        out: list[str] = []
        for choice in self.components().values():
            out.extend(c for c in choice.component.caveats(choice.options) if c not in out)
        return out


def portable_dict(config: RunConfig) -> dict[str, Any]:
    """`to_dict(config)` without what may differ between machines and changes no result beyond
    round-off: the device and the eval settings in EvalConfig.machine_local (e.g.
    eval.prep_workers)."""
    document = to_dict(config)
    document.pop("device", None)
    for name in EvalConfig.machine_local:
        document["eval"].pop(name, None)
    return document
