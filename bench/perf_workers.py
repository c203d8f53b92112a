"""Workers side by side: the training throughput of each of several `bench run`-like processes
on one machine against one process alone, with torch's default threads and with the thread
policy of bench.threads (what `bench run` uses)."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import threads
from bench.errors import BenchError
from bench.perf import PERF_MODEL, PERF_TIMESTEPS
from casdm.architectures import build_model
from casdm.config import ArchitectureConfig, MetricConfig, TrainConfig
from casdm.files import atomic_write_text
from casdm.metrics import build_metric
from casdm.schedule import Schedule
from casdm.train import train

MODES = ("default", "policy")  # torch's default thread count; bench.threads' choice


def workers_benchmark(
    workers: int = 2,
    steps: int = 20,
    *,
    batch_size: int = 64,
    channels: int = 1,
    resolution: int = 16,
    architecture: str = "ddpm",
    seed: int = 0,
    timeout: float = 600,
) -> list[dict[str, Any]]:
    """Train PERF_MODEL (metric `none`) on the CPU in fresh processes started together.

    First one process alone with the policy (on an idle machine: every core), then `workers`
    processes side by side, once per mode in MODES. The processes build their model, then wait
    at a common start line; each times `steps` steps after as many untimed ones. Rows:
    - "workers-train": one per process; keys mode, workers, worker, threads, images_per_s;
    - "ratio": one per mode and worker; name, value = its images/s / the lone process's.
    Every row also has batch_size, image ("CxHxW") and cores (bench.threads.available_cores).
    """
    if workers < 2 or steps < 1:
        raise BenchError(
            f"the workers benchmark needs workers >= 2 and steps >= 1; got "
            f"workers={workers}, steps={steps}"
        )
    spec = {
        "steps": steps,
        "batch_size": batch_size,
        "shape": [channels, resolution, resolution],
        "architecture": architecture,
        "seed": seed,
    }
    common = {
        "batch_size": batch_size,
        "image": f"{channels}x{resolution}x{resolution}",
        "cores": threads.available_cores(),
    }
    alone = _side_by_side(spec, "policy", 1, timeout)[0]
    rows = [{**alone, **common}]
    for mode in MODES:
        side = _side_by_side(spec, mode, workers, timeout)
        rows += [{**row, **common} for row in side]
        rows += [
            {
                "benchmark": "ratio",
                "name": f"{mode} threads: worker {row['worker']} of {workers} / one alone",
                "value": row["images_per_s"] / alone["images_per_s"],
                **common,
            }
            for row in side
        ]
    return rows


def _side_by_side(spec: dict[str, Any], mode: str, workers: int, timeout: float) -> list[dict]:
    """`workers` processes of `_worker` released together; their rows in worker order."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", threads.ENV):
        env.pop(key, None)  # the mode alone decides
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = [
            {**spec, "mode": mode, "worker": index, "workers": workers, "folder": tmp}
            for index in range(workers)
        ]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.perf_workers", json.dumps(job)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
            )
            for job in jobs
        ]
        deadline = time.monotonic() + timeout
        while len(list(folder.glob("ready-*"))) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        (folder / "go").touch()
        rows = []
        for index, proc in enumerate(procs):
            try:
                log, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as err:
                for other in procs:
                    other.kill()
                raise RuntimeError(f"the {mode} side-by-side run timed out: {err}") from None
            out = folder / f"row-{index}.json"
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"worker {index} of the {mode} run failed:\n{log[-3000:]}")
            rows.append(json.loads(out.read_text()))
        return rows


def _worker(job: dict[str, Any]) -> None:
    """One process of `_side_by_side`: build, wait for the start line, train, write its row."""
    folder = Path(job["folder"])
    shape = tuple(job["shape"])
    generator = torch.Generator().manual_seed(job["seed"])
    images = torch.rand((8 * job["batch_size"], *shape), generator=generator) * 2 - 1
    torch.manual_seed(job["seed"])
    model = build_model(
        ArchitectureConfig(name=job["architecture"]),
        PERF_MODEL,
        Schedule.named("linear", PERF_TIMESTEPS),
        shape[0],
        shape[1],
    )
    metric = build_metric(MetricConfig(name="none"), shape)
    steps = job["steps"]
    # Two records: steps 1..steps warm up, the second one times steps+1..2 steps.
    cfg = TrainConfig(
        steps=2 * steps, batch_size=job["batch_size"], warmup_steps=0, log_every=steps
    )
    policy = job["mode"] == "policy"
    with threads.worker_threads(folder=folder / "workers") if policy else contextlib.nullcontext():
        (folder / f"ready-{job['worker']}").touch()
        while not (folder / "go").exists():
            time.sleep(0.01)
        threads.refresh(force=True)  # as `bench run` does before each trial: all are counted
        result = train(model, metric, images, cfg, seed=job["seed"], device="cpu")
        row = {
            "benchmark": "workers-train",
            "mode": job["mode"],
            "workers": job["workers"],
            "worker": job["worker"],
            "threads": torch.get_num_threads(),
            "images_per_s": result.history[-1]["images_per_s"],
        }
    atomic_write_text(folder / f"row-{job['worker']}.json", json.dumps(row))


if __name__ == "__main__":  # the process that `_side_by_side` starts
    _worker(json.loads(sys.argv[1]))
