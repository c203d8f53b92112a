"""Model throughput on this machine: training images/s per architecture, DDIM sampling images/s,
and Cas-DM's training step time relative to DDPM's, all with one fixed small UNet."""

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.errors import BenchError
from casdm.architectures import ARCHITECTURES, build_model, count_parameters
from casdm.config import ArchitectureConfig, MetricConfig, ModelConfig, TrainConfig
from casdm.metrics import build_metric
from casdm.samplers import ddim
from casdm.schedule import Schedule
from casdm.train import train

# Fixed here, not taken from ModelConfig's defaults, so numbers stay comparable across versions.
PERF_MODEL = ModelConfig(
    base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,)
)
PERF_TIMESTEPS = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_benchmarks(
    device: torch.device | str = "cpu",
    steps: int = 20,
    *,
    warmup: int = 3,
    batch_size: int = 64,
    channels: int = 1,
    resolution: int = 16,
    sample_steps: int = 10,
    repeats: int = 3,
    compile: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of measurements, each a dict with a "benchmark" key:

    - "train": one per architecture with metric `none`, plus cas-dm with `l2`; keys
      architecture, metric, images_per_s, ms_per_step, parameters. The median of `steps`
      timed steps of `train` itself (AdamW, clipping, EMA; bf16 on CUDA), after `warmup` steps.
    - "sample": one per architecture; keys architecture, sampler ("ddim"), sample_steps,
      images_per_s, ms_per_batch. The median of `repeats` timed calls after one untimed call.
    - "ratio": keys name, value = cas-dm's median training step time / ddpm's (both metric
      `none`), measured in this same call, one after the other.
    Every row also has device, batch_size and image ("CxHxW"); on CUDA, train rows have
    peak_memory_mb.
    """
    device = torch.device(device)
    if steps < 1 or warmup < 0 or repeats < 1:
        raise BenchError(
            f"perf needs steps >= 1, warmup >= 0 and repeats >= 1; got steps={steps}, "
            f"warmup={warmup}, repeats={repeats}"
        )
    schedule = Schedule.named("linear", PERF_TIMESTEPS)
    shape = (channels, resolution, resolution)
    common = {"device": str(device), "batch_size": batch_size, "image": "x".join(map(str, shape))}
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((8 * batch_size, *shape), generator=generator) * 2 - 1  # [N, C, H, W]
    cfg = TrainConfig(
        steps=warmup + steps,
        batch_size=batch_size,
        warmup_steps=0,
        log_every=1,  # one record per step: its images_per_s is that step's throughput
        checkpoint_every=warmup + steps,
        compile=compile,
    )

    rows: list[dict[str, Any]] = []
    trained: dict[str, torch.nn.Module] = {}
    runs = [(name, "none") for name in ARCHITECTURES] + [("cas-dm", "l2")]
    for arch, metric_name in runs:
        if progress is not None:
            progress(f"train {arch} (metric {metric_name})")
        torch.manual_seed(seed)
        model = build_model(
            ArchitectureConfig(name=arch), PERF_MODEL, schedule, channels, resolution
        )
        metric = build_metric(MetricConfig(name=metric_name), shape)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = train(model, metric, images, cfg, seed=seed, device=device)
        step_s = statistics.median(batch_size / r["images_per_s"] for r in result.history[warmup:])
        row = {
            "benchmark": "train",
            "architecture": arch,
            "metric": metric_name,
            "images_per_s": batch_size / step_s,
            "ms_per_step": 1000 * step_s,
            "parameters": count_parameters(model),
            **common,
        }
        if device.type == "cuda":
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        if metric_name == "none":
            trained[arch] = result.ema

    for arch, model in trained.items():
        if progress is not None:
            progress(f"sample {arch} (ddim, {sample_steps} steps)")
        x_T = torch.randn((batch_size, *shape), generator=generator).to(device)
        noise = torch.Generator(device=device).manual_seed(seed)
        times = []
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            ddim(model, schedule, x_T, steps=sample_steps, generator=noise)
            _sync(device)
            times.append(time.perf_counter() - start)
        batch_s = statistics.median(times[1:])  # the first call warms up caches and kernels
        rows.append(
            {
                "benchmark": "sample",
                "architecture": arch,
                "sampler": "ddim",
                "sample_steps": sample_steps,
                "images_per_s": batch_size / batch_s,
                "ms_per_batch": 1000 * batch_s,
                **common,
            }
        )

    step_ms = {r["architecture"]: r["ms_per_step"] for r in rows if r.get("metric") == "none"}
    ratio = step_ms["cas-dm"] / step_ms["ddpm"]
    rows.append(
        {"benchmark": "ratio", "name": "cas-dm / ddpm train step time", "value": ratio, **common}
    )
    return rows
