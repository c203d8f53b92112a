"""The training and sampling runs tests/test_distributed.py compares: run on each of 2 gloo
processes by tests/torchrun_worker.py, and in the test process itself as the 1-process
reference.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from casdm.architectures import build_model
from casdm.checkpoint import load_checkpoint
from casdm.config import (
    ArchitectureConfig,
    ConfigError,
    MetricConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from casdm.metrics import build_metric, mean_flat
from casdm.samplers import generate
from casdm.schedule import Schedule
from casdm.train import TrainResult, train

SHAPE = (1, 16, 16)


class PixelLinear(nn.Module):
    """x0_theta = a * x_t + b per pixel. Unlike a UNet's biases ahead of a GroupNorm, whose
    gradient is zero up to float rounding and which Adam's normalisation then moves by up to
    lr either way, each parameter here has a real gradient, so weights compare directly."""

    def __init__(self):
        super().__init__()
        self.schedule = Schedule.named("linear", 100)
        self.a = nn.Parameter(torch.ones(SHAPE))
        self.b = nn.Parameter(torch.zeros(SHAPE))

    def loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, metric: nn.Module
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0_theta = self.a * self.schedule.q_sample(x0, t, noise) + self.b
        x0_mse = mean_flat((x0 - x0_theta) ** 2)  # [B]
        return x0_mse, {"x0_mse": x0_mse.detach().mean()}


def tiny_model(arch: str, dropout: float = 0.0, init_seed: int = 0) -> nn.Module:
    torch.manual_seed(init_seed)
    if arch == "pixel-linear":
        return PixelLinear()
    model = ModelConfig(
        base_channels=8, channel_mults=(1,), attention_resolutions=(), dropout=dropout
    )
    return build_model(
        ArchitectureConfig(name=arch), model, Schedule.named("linear", 100), SHAPE[0], SHAPE[-1]
    )


def config(**kwargs: Any) -> TrainConfig:
    # ema_decay 0.5: in 4 steps the EMA moves about as far as the weights, so comparing it tells.
    defaults = {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "log_every": 2}
    defaults["ema_decay"] = 0.5
    return TrainConfig(**{**defaults, **kwargs})


def images() -> torch.Tensor:
    """Random 16x16 "digits": a fixed set of 32 images in [-1, 1]."""
    return torch.rand((32, *SHAPE), generator=torch.Generator().manual_seed(0)) * 2 - 1


# Cas-DM trials that differ only in the metric: theta must end bitwise the same in all of them.
METRIC_VARIANTS = {
    "none": MetricConfig(name="none"),
    "l2-w0": MetricConfig(name="l2", weight=0.0),
    "l2-w10": MetricConfig(name="l2", weight=10.0),
    "lpips-random": MetricConfig(name="lpips", weight=1.0, trunk="random"),
}


def theta_runs(data: torch.Tensor, steps: int = 20, **cfg: Any) -> dict[str, dict[str, Any]]:
    """{variant: theta's weights, theta's EMA and the training history} of 20-step Cas-DM runs
    with dropout 0.1, clipping at 1.0 and weight decay, differing only in the metric."""
    out = {}
    for name, metric_cfg in METRIC_VARIANTS.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)  # a random LPIPS trunk is drawn from the global RNG
            metric = build_metric(metric_cfg, SHAPE)
        settings = {"lr": 2e-3, "grad_clip": 1.0, "weight_decay": 0.01, "ema_decay": 0.9}
        trained = train_run(
            "cas-dm", data, metric, dropout=0.1, steps=steps, log_every=5, **{**settings, **cfg}
        )
        out[name] = {
            key: {n: v for n, v in module.state_dict().items() if n.startswith("theta.")}
            for key, module in (("theta", trained.model), ("ema", trained.ema))
        }
        out[name]["history"] = trained.history
    return out


def run(out: Path, *, theta: bool = True) -> dict[str, Any]:
    """Every run the test compares, as plain data; rank 0 also writes a checkpoint into `out`.
    theta=False leaves out `theta_runs` (in one process, tests/test_train.py runs them)."""
    data, metric = images(), build_metric(MetricConfig(name="l2", weight=0.5))
    result: dict[str, Any] = {"train": {}}
    for arch in ("pixel-linear", "ddpm", "cas-dm"):
        records: list[dict[str, float]] = []
        trained = train_run(arch, data, metric, callback=records.append)
        result["train"][arch] = {
            "model": trained.model.state_dict(),
            "ema": trained.ema.state_dict(),
            "history": trained.history,
            "callback": records,
        }

    if theta:
        result["theta"] = theta_runs(data)

    # Stop at step 2 and resume to 4 with dropout on: each rank's own dropout stream comes back.
    path = out / "ckpt.pt"
    train_run("cas-dm", data, metric, dropout=0.1, steps=2, checkpoint_path=path)
    result["checkpoint_rank_rng"] = len(load_checkpoint(path).get("rank_rng", []))
    resumed = train_run("cas-dm", data, metric, dropout=0.1, init_seed=9, checkpoint_path=path)
    straight = train_run("cas-dm", data, metric, dropout=0.1)
    result["resumed"] = resumed.model.state_dict()
    result["straight"] = straight.model.state_dict()

    # ddim with batches of 1: each sample meets the very kernels it meets in one process.
    model = tiny_model("cas-dm", init_seed=1)
    result["samples"], result["progress"] = {}, []
    for sampler, num_samples, batch_size in [("ddim", 7, 1), ("ddpm", 7, 2), ("ddim", 1, 1)]:
        cfg = SampleConfig(sampler=sampler, steps=4, num_samples=num_samples, batch_size=batch_size)
        progress: list[list[int]] = []
        result["samples"][f"{sampler}-{num_samples}"] = generate(
            model,
            model.schedule,
            cfg,
            SHAPE,
            seed=5,
            device="cpu",
            progress=lambda done, total, calls=progress: calls.append([done, total]),
        )
        result["progress"].append(progress)

    try:
        train_run("ddpm", data, metric, steps=1, batch_size=5)
        result["odd_batch"] = "trained"
    except ConfigError as err:
        result["odd_batch"] = str(err)
    return result


def train_run(
    arch: str,
    data: torch.Tensor,
    metric: nn.Module,
    *,
    dropout: float = 0.0,
    init_seed: int = 0,
    checkpoint_path: Path | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
    **cfg: Any,
) -> TrainResult:
    return train(
        tiny_model(arch, dropout, init_seed),
        metric,
        data,
        config(**cfg),
        seed=3,
        checkpoint_path=checkpoint_path,
        callback=callback,
    )
