"""Model throughput on this machine: training images/s per architecture, DDIM sampling images/s,
and Cas-DM's training step time relative to DDPM's, all with one fixed small UNet; training
images/s per speed option (train.precision, channels_last, ...) against fp32 and against
diffusers' UNet2DModel; and one trial's training throughput over several processes (torchrun,
DDP) relative to one process."""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from casdm import distributed
from casdm.architectures import build_model, count_parameters
from casdm.components import registry
from casdm.config import ArchitectureConfig, MetricConfig, ModelConfig, TrainConfig
from casdm.files import atomic_write_text
from casdm.metrics import build_metric
from casdm.samplers import ddim
from casdm.schedule import Schedule
from casdm.train import Performance, train

# Fixed here, not taken from ModelConfig's defaults, so numbers stay comparable across versions.
PERF_MODEL = ModelConfig(
    base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,)
)
PERF_TIMESTEPS = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_image(history: list[dict[str, float]], warmup: int) -> float:
    """The median seconds per image of the training steps that `train` logged after the first
    `warmup` (with log_every=1: one record per step), so that one step slowed by another
    process does not skew it."""
    return statistics.median(1 / record["images_per_s"] for record in history[warmup:])


def call_seconds(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The median wall time of `repeats` calls of `call` after one untimed call (which warms up
    caches and kernels), with `device` synchronised before and after each."""
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


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
    runs = [(name, "none") for name in registry("architecture").names()] + [("cas-dm", "l2")]
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
        step_s = batch_size * seconds_per_image(result.history, warmup)
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
        sample = partial(ddim, model, schedule, x_T, steps=sample_steps, generator=noise)
        batch_s = call_seconds(sample, repeats, device)
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


FP32 = {"precision": "fp32", "channels_last": "off", "fused_adamw": "off", "tf32": False}


def option_variants(device: torch.device, compile: bool) -> dict[str, dict[str, Any]]:
    """{name: TrainConfig fields} of the option benchmark: plain fp32, each option alone on
    top of it, the device's defaults ("auto"), and with `compile` the defaults compiled."""
    variants = {
        "fp32": FP32,
        "bf16": {**FP32, "precision": "bf16"},
        "fp16": {**FP32, "precision": "fp16"},
        "channels_last": {**FP32, "channels_last": "on"},
        "fused_adamw": {**FP32, "fused_adamw": "on"},
    }
    if device.type == "cuda":
        variants["tf32"] = {**FP32, "tf32": True}
    variants["auto"] = {}
    if compile:
        variants["auto+compile"] = {"compile": True}
    return variants


class _DiffusersNet(torch.nn.Module):
    """diffusers' UNet2DModel as our networks are called: net(x, t) -> [B, C, H, W]."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        from diffusers import UNet2DModel  # a test dependency: imported only when measured

        width = PERF_MODEL.base_channels
        self.unet = UNet2DModel(  # PERF_MODEL's shape: 2 levels, 1 block each, attention at 8
            sample_size=resolution,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(width * m for m in PERF_MODEL.channel_mults),
            layers_per_block=PERF_MODEL.num_res_blocks,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=width * PERF_MODEL.channel_mults[-1],
            norm_num_groups=min(32, width),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def options_benchmark(
    device: torch.device | str = "cpu",
    steps: int = 20,
    *,
    warmup: int = 3,
    rounds: int = 2,
    batch_size: int = 64,
    channels: int = 3,
    resolution: int = 16,
    compile: bool | None = None,
    diffusers: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Training images/s of ddpm on PERF_MODEL per speed option, and of the same training
    with diffusers' UNet2DModel of the same shape, interleaved over `rounds` rounds.

    Rows "train-option": option, network ("casdm" or "diffusers"), the resolved Performance
    fields, images_per_s and ms_per_step (median over every round's timed steps),
    vs_fp32 (our fp32 step time / this step time) and, for every option diffusers ran too,
    vs_diffusers (diffusers' step time under that option / ours). `compile` (default: on
    CUDA only, where it pays off; several minutes on a CPU) adds "auto+compile".
    """
    device = torch.device(device)
    if steps < 1 or warmup < 0 or rounds < 1:
        raise BenchError(
            f"perf needs steps >= 1, warmup >= 0 and rounds >= 1; got steps={steps}, "
            f"warmup={warmup}, rounds={rounds}"
        )
    compile = device.type == "cuda" if compile is None else compile
    schedule = Schedule.named("linear", PERF_TIMESTEPS)
    shape = (channels, resolution, resolution)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((8 * batch_size, *shape), generator=generator) * 2 - 1  # [N, C, H, W]
    base = TrainConfig(steps=warmup + steps, batch_size=batch_size, warmup_steps=0, log_every=1)
    variants = option_variants(device, compile)
    networks = ["casdm"]
    if diffusers:
        try:
            _DiffusersNet(channels, resolution)
            networks.append("diffusers")
        except ImportError:
            if progress is not None:
                progress("diffusers is not installed: no UNet2DModel rows")
    step_s: dict[tuple[str, str], list[float]] = {}
    performance: dict[str, Performance] = {}
    parameters: dict[str, int] = {}
    for _ in range(rounds):
        for option, fields in variants.items():
            for network in networks:
                if network == "diffusers" and "compile" in fields:
                    continue
                if progress is not None:
                    progress(f"train {network} ({option})")
                torch.manual_seed(seed)
                model = build_model(
                    ArchitectureConfig(name="ddpm"), PERF_MODEL, schedule, channels, resolution
                )
                if network == "diffusers":
                    model.net = _DiffusersNet(channels, resolution)
                parameters[network] = count_parameters(model)
                cfg = replace(base, **fields)
                metric = build_metric(MetricConfig(name="none"), shape)
                result = train(model, metric, images, cfg, seed=seed, device=device)
                performance[option] = result.performance
                step_s.setdefault((option, network), []).extend(
                    batch_size / r["images_per_s"] for r in result.history[warmup:]
                )
    median = {key: statistics.median(times) for key, times in step_s.items()}
    common = {"device": str(device), "batch_size": batch_size, "image": "x".join(map(str, shape))}
    rows = []
    for (option, network), seconds in median.items():
        row = {
            "benchmark": "train-option",
            "option": option,
            "network": network,
            "parameters": parameters[network],
            **dataclasses.asdict(performance[option]),
            "images_per_s": batch_size / seconds,
            "ms_per_step": 1000 * seconds,
            "vs_fp32": median[("fp32", network)] / seconds,
        }
        if network == "casdm" and (option, "diffusers") in median:
            row["vs_diffusers"] = median[(option, "diffusers")] / seconds
        rows.append({**row, **common})
    return rows


def distributed_benchmark(
    nproc: int = 2,
    device: torch.device | str = "cpu",
    steps: int = 10,
    *,
    batch_size: int = 64,
    channels: int = 1,
    resolution: int = 16,
    architecture: str = "ddpm",
    threads: int = 1,
    seed: int = 0,
    timeout: float = 600,
) -> list[dict[str, Any]]:
    """Training throughput of one trial over `nproc` processes (torchrun, DDP) against one.

    Both runs train PERF_MODEL (metric `none`) with the same global `batch_size`, each in a fresh
    subprocess with `threads` torch threads per process: `python -m bench.perf`, then
    `torchrun --standalone --nproc_per_node=nproc -m bench.perf` (gloo on the CPU, NCCL on
    CUDA). Each times `steps` steps after as many untimed ones. Rows:
    - "distributed-train": one per process count; keys processes, architecture, images_per_s
      (global), ms_per_step, and for nproc processes allreduce_ms: the median time of one
      all-reduce of a float32 tensor as large as the gradients, what DDP adds to every step.
    - "ratio": name, value = nproc-process images/s / 1-process images/s, from these runs.
    Every row also has device, batch_size, image ("CxHxW") and threads_per_process.
    """
    device = torch.device(device)
    if nproc < 2 or steps < 1 or threads < 1 or batch_size % nproc:
        raise BenchError(
            f"the distributed benchmark needs nproc >= 2, steps >= 1, threads >= 1 and a batch "
            f"size divisible by nproc; got nproc={nproc}, steps={steps}, threads={threads}, "
            f"batch_size={batch_size}"
        )
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise BenchError(
            f"nproc={nproc} processes need {nproc} GPUs (one each); this machine has "
            f"{torch.cuda.device_count()}"
        )
    spec = {
        "device": device.type,
        "steps": steps,
        "batch_size": batch_size,
        "shape": [channels, resolution, resolution],
        "architecture": architecture,
        "threads": threads,
        "seed": seed,
    }
    common = {
        "device": device.type,
        "batch_size": batch_size,
        "image": f"{channels}x{resolution}x{resolution}",
        "threads_per_process": threads,
    }
    rows = [{**_launch_throughput(spec, n, timeout), **common} for n in (1, nproc)]
    rows.append(
        {
            "benchmark": "ratio",
            "name": f"{nproc}-process / 1-process train throughput",
            "value": rows[1]["images_per_s"] / rows[0]["images_per_s"],
            **common,
        }
    )
    return rows


def _launch_throughput(spec: dict[str, Any], nproc: int, timeout: float) -> dict[str, Any]:
    """Run `_throughput_worker` in `nproc` fresh processes (torchrun when nproc > 1)."""
    launcher = [sys.executable, "-m"]
    if nproc > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        done = subprocess.run(
            [*launcher, "bench.perf", json.dumps(spec), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0 or not out.exists():
            log = (done.stdout + done.stderr)[-3000:]
            raise RuntimeError(f"the {nproc}-process throughput run failed:\n{log}")
        return json.loads(out.read_text())


def _throughput_worker(spec: dict[str, Any], out: Path) -> None:
    """One process of `distributed_benchmark`'s runs; rank 0 writes its row to `out` as JSON."""
    torch.set_num_threads(spec["threads"])
    dist = distributed.init_from_env(spec["device"])
    try:
        steps, batch_size, shape = spec["steps"], spec["batch_size"], tuple(spec["shape"])
        generator = torch.Generator().manual_seed(spec["seed"])
        images = torch.rand((8 * batch_size, *shape), generator=generator) * 2 - 1
        torch.manual_seed(spec["seed"])
        model = build_model(
            ArchitectureConfig(name=spec["architecture"]),
            PERF_MODEL,
            Schedule.named("linear", PERF_TIMESTEPS),
            shape[0],
            shape[1],
        )
        # Two records: steps 1..steps warm up, the second one times steps+1..2 steps.
        cfg = TrainConfig(steps=2 * steps, batch_size=batch_size, warmup_steps=0, log_every=steps)
        metric = build_metric(MetricConfig(name="none"), shape)
        result = train(model, metric, images, cfg, seed=spec["seed"], device=dist.device)
        images_per_s = result.history[-1]["images_per_s"]
        row = {
            "benchmark": "distributed-train",
            "processes": dist.world_size,
            "architecture": spec["architecture"],
            "images_per_s": images_per_s,
            "ms_per_step": 1000 * batch_size / images_per_s,
        }
        if dist.world_size > 1:
            grads = torch.ones(count_parameters(model), device=dist.device)  # [P]
            times = []
            for _ in range(steps + 1):
                distributed.barrier()
                start = time.perf_counter()
                distributed.all_reduce_sum(grads)
                _sync(dist.device)
                times.append(time.perf_counter() - start)
            row["allreduce_ms"] = 1000 * statistics.median(times[1:])
        if dist.is_main:
            atomic_write_text(out, json.dumps(row))  # the parent never reads half a row
    finally:
        distributed.shutdown()


if __name__ == "__main__":  # the process that `_launch_throughput` starts
    _throughput_worker(json.loads(sys.argv[1]), Path(sys.argv[2]))
