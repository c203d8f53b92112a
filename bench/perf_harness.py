"""Harness overhead: one study cell through `bench run` against a bare script that trains,
samples and scores the same config with the library (casdm.train, casdm.samplers,
bench.evaluation), each in a fresh process, alternating over interleaved repetitions.

Both sides read the same evaluator cache (classifier weights, reference statistics), built by
an untimed `bench run` first (which also makes the empty MLflow store new stores are copied
from), and run with the same torch threads. `bench run` starts each repetition in an empty
results folder, as the first `bench run` of a study does: the time it adds is process start-up
(optuna, mlflow), the Optuna storage and MLflow store, the held-out real-data row (scored once
per study), checkpoints, samples.npz and per-step logging. Both sides score alike: the scores
and their bootstrap standard errors (eval.bootstrap), compared bit for bit (same_scores).

`bench run` ends as the `bench` command does (bench.cli.console: no garbage collection of the
whole heap at exit); the bare script ends as any Python script does. Each repetition's own
ratio is reported beside the medians' (repetition_ratios), to show how noisy the machine was.

`python -m bench.perf_harness STUDY CACHE_DIR [KEY=VALUE ...]` runs the bare side.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError

# The cell measured by default: a quickstart cell that runs offline (LPIPS with a random trunk:
# the same network and cost as the pretrained one, without its download).
DEFAULT_STUDY = Path(__file__).resolve().parents[1] / "studies" / "quickstart.toml"
DEFAULT_CELL = ("architecture.name=ddpm", "metric.name=lpips", "metric.trunk=random")


def bare_cell(study_path: str, cache_dir: Path, overrides: list[str]) -> dict[str, float]:
    """Train, sample and score the study's first cell with the library alone: its scores and
    their bootstrap standard errors, as a trial stores them."""
    import torch

    from bench.evaluation import build_evaluator, reference_statistics, score
    from bench.study import load_study
    from casdm.architectures import build_model
    from casdm.data import load_dataset, to_uint8
    from casdm.metrics import build_metric
    from casdm.samplers import generate
    from casdm.schedule import Schedule
    from casdm.train import train

    study = load_study(study_path, overrides)
    config = study.config(study.cells()[0])
    device = torch.device("cpu" if config.device == "auto" else config.device)
    data = load_dataset(config.data, "train")
    shape = tuple(data.pixels.shape[1:])
    schedule = Schedule.named(config.diffusion.schedule, config.diffusion.timesteps)
    torch.manual_seed(config.seed)
    model = build_model(config.architecture, config.model, schedule, shape[0], shape[1])
    metric = build_metric(config.metric, shape)
    result = train(model, metric, data.pixels, config.train, seed=config.seed, device=device)
    samples = generate(result.ema, schedule, config.sample, shape, seed=config.seed, device=device)
    evaluator = build_evaluator(config.eval, config.data, device=device, cache_dir=cache_dir)
    reference = reference_statistics(evaluator, config.data, config.eval, cache_dir=cache_dir)
    return score(
        to_uint8(samples),
        evaluator,
        reference,
        is_protocol=config.eval.is_protocol,
        is_splits=config.eval.is_splits,
        batch_size=config.eval.batch_size,
        bootstrap=config.eval.bootstrap,  # the standard errors a trial stores with its scores
        prep_workers=config.eval.prep_workers,
    )


def _timed(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[float, str]:
    """Seconds `command` took, and its standard output."""
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def harness_benchmark(
    study: Path = DEFAULT_STUDY,
    overrides: tuple[str, ...] = DEFAULT_CELL,
    *,
    steps: int | None = None,
    repeats: int = 3,
    threads: int = 1,
    timeout: float = 1800,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Seconds of one cell through `bench run` and through the bare script (medians of
    `repeats` interleaved repetitions, each repetition's first side alternating) and their
    ratio; `steps` shortens training (train.steps) for a quicker look. `cache`: an evaluator
    cache already built for the cell's evaluator (copied), in place of the untimed first run."""
    if repeats < 1:
        raise BenchError(f"--harness-repeats must be >= 1, got {repeats}")
    cell = [*overrides, *([f"train.steps={steps}"] if steps is not None else [])]
    env = dict(os.environ, CASDM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    sets = [arg for key in cell for arg in ("--set", key)]
    times: dict[str, list[float]] = {"bench_run": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as folder:
        work = Path(folder)
        (work / "studies").mkdir()
        shutil.copyfile(study, work / "studies" / study.name)
        name = study.stem

        def bench_run(results: Path) -> float:
            command = [sys.executable, "-m", "bench", "run", "--study", name, "--quiet"]
            return _timed([*command, "--results", str(results), *sets], work, env, timeout)[0]

        if cache is None:  # untimed: builds the evaluator cache and the MLflow template
            bench_run(work / "warm")
            cache = work / "warm" / "cache"
        else:  # a copy: the bare side writes what it lacks into the cache it reads
            cache = Path(shutil.copytree(cache, work / "cache"))
        for repetition in range(repeats):
            sides = ("bench_run", "bare") if repetition % 2 == 0 else ("bare", "bench_run")
            for side in sides:
                if side == "bench_run":
                    results = work / f"run{repetition}"
                    shutil.copytree(cache, results / "cache")
                    times[side].append(bench_run(results))
                else:
                    command = [sys.executable, "-m", "bench.perf_harness", name, str(cache)]
                    seconds, out = _timed([*command, *cell], work, env, timeout)
                    times[side].append(seconds)
                    bare_scores = json.loads(out)
        run_scores = _trial_scores(work, name, work / f"run{repeats - 1}", cell, list(bare_scores))
    median = {side: statistics.median(values) for side, values in times.items()}
    # Each repetition's two sides ran back to back: their ratios show the spread a busy or
    # throttled machine puts on the medians' ratio.
    pairs = [run / bare for run, bare in zip(times["bench_run"], times["bare"], strict=True)]
    return {
        "cell": " ".join(cell),
        "threads": threads,
        "repeats": repeats,
        "bench_run_s": median["bench_run"],
        "bare_s": median["bare"],
        "overhead": median["bench_run"] / median["bare"] - 1,
        "ratio": median["bench_run"] / median["bare"],
        "repetition_ratios": [round(pair, 3) for pair in pairs],
        # Both sides did the same work: the trial's scores are the bare script's, bit for bit.
        "same_scores": run_scores == bare_scores,
    }


def _trial_scores(
    work: Path, name: str, results: Path, cell: list[str], keys: list[str]
) -> dict[str, float]:
    """The scores `keys` that `bench run` stored for the cell in `results`."""
    from bench.results import read_records, storage_url_for
    from bench.study import load_study

    study = load_study(str(work / "studies" / f"{name}.toml"), cell)
    (trial,) = read_records(study, storage_url_for(results)).complete
    return {key: trial.get(key) for key in keys}


if __name__ == "__main__":
    print(json.dumps(bare_cell(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])))
