"""`bench run --dry-run`: a study's pending trials and a rough cost for each, measured on this
machine's device; creates nothing, downloads nothing."""

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from bench.cells import required_weights, with_device
from bench.claims import pending_cells, stored_mismatch
from bench.config import RunConfig
from bench.errors import BenchError
from bench.study import Study
from casdm.config import to_dict

if TYPE_CHECKING:
    import torch

# The dry run's cost estimate times batches of at most this many images.
MEASURE_BATCH = 64
# ... and takes the median of this many timed training steps and sampling steps.
MEASURE_REPEATS = 3


@dataclass(frozen=True)
class CellCost:
    """The work one trial does, and a rough time for it."""

    cell: str
    train_images: int  # train.steps x train.batch_size
    samples: int
    sampling_evals: int  # samples x sampler steps (model evaluations per image)
    seconds: float  # training + sampling, extrapolated from a measurement; scoring excluded


@dataclass(frozen=True)
class Plan:
    """What `bench run --dry-run` prints: the pending trials, their cost, the weights needed."""

    study: str
    total: int
    cells: list[CellCost]
    device: str
    weights: dict[str, str]  # casdm.weights name -> present / missing / corrupt
    method: str = (
        f"measured: the median of {MEASURE_REPEATS} training steps and of {MEASURE_REPEATS} "
        "sampling steps of a random-weight model at the run's batch sizes (at most "
        f"{MEASURE_BATCH}) on this machine's device, extrapolated linearly per image; "
        "evaluation not included"
    )

    @property
    def seconds(self) -> float:
        """The pending trials' estimated training and sampling time on `device`, one worker."""
        return sum(c.seconds for c in self.cells)

    @property
    def device_hours(self) -> float:
        """`seconds` in hours of the measured device: divide by the workers to get wall time."""
        return self.seconds / 3600


def plan_study(study: Study, storage: str, device: str | None = None) -> Plan:
    """The pending trials of `study` and a cost estimate; creates nothing, downloads nothing."""
    from bench.trial import resolve_device
    from casdm import weights

    mismatch = stored_mismatch(study, storage)
    if mismatch is not None:
        raise BenchError(f"dry run: `bench run` would stop before any trial: {mismatch}")
    pending = pending_cells(study, storage)
    if not study.is_grid:
        # A search has no fixed cells: n_trials trials like its base config.
        pending = [study.cells()[i % len(study.cells())] for i in range(study.size)]
    configs = [with_device(study.config(p), device) for p in pending]
    torch_device = resolve_device(configs[0].device if configs else device or "auto")
    measured: dict[str, tuple[float, float]] = {}
    costs = []
    for params, config in zip(pending, configs, strict=True):
        key = json.dumps(
            [
                to_dict(config.architecture),
                to_dict(config.model),
                to_dict(config.metric),
                config.data.resolution,
                config.train.batch_size,
                config.sample.batch_size,
            ],
            sort_keys=True,
        )
        if key not in measured:
            measured[key] = measure_step_seconds(config, torch_device)
        train_s, forward_s = measured[key]
        train_images = config.train.steps * config.train.batch_size
        sampler = config.sample
        evals = sampler.num_samples * sampler.component.network_evaluations(
            sampler.options, sampler.steps
        )
        costs.append(
            CellCost(
                cell=study.cell_name(params) or "base",
                train_images=train_images,
                samples=config.sample.num_samples,
                sampling_evals=evals,
                seconds=train_images * train_s + evals * forward_s,
            )
        )
    needed = required_weights(study.trial_configs())
    return Plan(
        study=study.name,
        total=study.size,
        cells=costs,
        device=str(torch_device),
        weights={name: weights.status(name) for name in needed},
    )


def measure_step_seconds(config: RunConfig, device: "torch.device") -> tuple[float, float]:
    """Seconds per image of a training step and of a sampling step of `config`'s model.

    Runs casdm's own `train` for 1 + MEASURE_REPEATS steps (the first warms up, and compiles
    with train.compile; the median of the others is taken, so one step slowed by another
    process does not skew the estimate) and `generate` for one sampler step 1 + MEASURE_REPEATS
    times (the median of all but the first), on a random-weight model with random images, at
    the run's batch sizes capped at MEASURE_BATCH, with 3 channels (the channel count barely
    changes the cost); each component runs with its `offline` options (e.g. a random LPIPS
    trunk: the same cost, no download).
    """
    import torch

    from bench.perf import call_seconds, seconds_per_image
    from casdm.architectures import build_model
    from casdm.metrics import build_metric
    from casdm.samplers import generate
    from casdm.schedule import Schedule
    from casdm.train import train

    shape = (3, config.data.resolution, config.data.resolution)
    schedule = Schedule.from_config(config.diffusion)
    model = build_model(config.architecture, config.model, schedule, *shape[:2])
    offline = dataclasses.replace(
        config.metric, options=config.metric.component.offline(config.metric.options)
    )
    metric = build_metric(offline, shape)
    train_batch = min(MEASURE_BATCH, config.train.batch_size)
    images = torch.rand((train_batch, *shape), generator=torch.Generator().manual_seed(0))
    steps = dataclasses.replace(
        config.train,
        steps=1 + MEASURE_REPEATS,
        batch_size=train_batch,
        warmup_steps=0,
        log_every=1,
    )
    result = train(model, metric, images * 2 - 1, steps, seed=0, device=device)
    train_s = seconds_per_image(result.history, 1)

    sample_batch = min(MEASURE_BATCH, config.sample.batch_size)
    one_step = dataclasses.replace(
        config.sample, steps=1, num_samples=sample_batch, batch_size=sample_batch
    )
    sample = partial(generate, result.ema, schedule, one_step, shape, seed=0, device=device)
    return train_s, call_seconds(sample, MEASURE_REPEATS, device) / sample_batch
