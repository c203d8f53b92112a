"""The whole run configuration: casdm's concerns plus evaluation, composed into one RunConfig."""

from dataclasses import dataclass, field
from typing import Literal

from casdm.config import (
    ArchitectureConfig,
    DataConfig,
    DiffusionConfig,
    MetricConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    check,
)

# clean-fid's modes, each reproduced exactly by the inception evaluator.
FID_PROTOCOLS = ("clean", "legacy_tensorflow", "legacy_pytorch")
# The mode closest to the TensorFlow FID code behind published diffusion numbers (TTUR, ADM).
DEFAULT_FID_PROTOCOL = "legacy_tensorflow"


@dataclass(frozen=True)
class EvalConfig:
    """How samples are scored: an EVALUATORS name and the reference set."""

    evaluator: str = "classifier"
    # Reference statistics come from this split of the dataset; the table's "real data" row
    # scores the other (held-out) split against them.
    reference_split: Literal["train", "test"] = "train"
    # Cap on reference images (0: the whole split).
    reference_images: int = 0
    # An ADM reference batch .npz to use instead of the dataset's statistics ("" for none).
    reference_npz: str = ""
    batch_size: int = 100
    # Inception Score protocol: "adm" (guided-diffusion's evaluator: consecutive chunks of
    # 5,000 samples, what diffusion papers report) or "torch-fidelity" (is_splits shuffled
    # splits, its defaults).
    is_protocol: Literal["adm", "torch-fidelity"] = "adm"
    is_splits: int = 10  # the number of splits of is_protocol = "torch-fidelity"
    # Random feature-network weights: tests and smoke runs only, labelled in every output.
    random_weights: bool = False
    # Bootstrap resamples of each trial's samples for the sampling uncertainty of FID and IS
    # (bench.evaluation.bootstrap): 0 none, -1 automatic (100 up to 512 feature dims, else 20).
    bootstrap: int = -1
    # The inception evaluator's protocol, one of FID_PROTOCOLS ("": DEFAULT_FID_PROTOCOL); the
    # classifier evaluator has its own and takes none.
    protocol: str = ""

    def __post_init__(self):
        check(self.reference_images >= 0, "reference_images", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.is_splits >= 1, "is_splits", "must be >= 1")
        check(self.bootstrap >= -1, "bootstrap", "must be >= 0 (resamples), or -1 (automatic)")
        check(
            self.protocol in ("", *FID_PROTOCOLS),
            "protocol",
            f"must be one of {', '.join(FID_PROTOCOLS)} (or empty for {DEFAULT_FID_PROTOCOL}), "
            f"got {self.protocol!r}",
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
