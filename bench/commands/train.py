"""`bench train`: train one model from a config (no Optuna, no MLflow); save checkpoint, samples."""

import argparse
import tomllib
from pathlib import Path
from typing import Any

from bench.commands import add_overrides
from bench.config import RunConfig
from bench.errors import BenchError
from bench.progress import make_progress
from bench.study import parse_override
from bench.trial import sample, save_samples, train_run
from casdm.config import ConfigError, from_dict, merge, unflatten


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="a TOML file holding a RunConfig as nested tables ([data], [train], ...); "
        "without it the defaults of bench/config.py and casdm/config.py",
    )
    add_overrides(parser)
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default results/train/<config name>); a checkpoint already "
        "there is resumed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_run_config(path: Path | None, overrides: list[str]) -> RunConfig:
    """A validated RunConfig from a TOML file (or the defaults) and `--set` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise BenchError(f"--config {path}: cannot read it: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise BenchError(f"{path}: TOML syntax error: {err}") from None
    for text in overrides:
        key, value = parse_override(text)
        data = merge(data, unflatten({key: value}))
    try:
        config = from_dict(RunConfig, data)
        config.validate()
    except ConfigError as err:
        where = f"{path}" if path is not None else "--set"
        raise BenchError(f"{where}: {err}") from None
    return config


def run(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, args.overrides)
    out = args.out or Path("results") / "train" / (args.config.stem if args.config else "run")
    with make_progress(args.quiet) as progress:
        progress.begin_trial(out.name, config.train.steps)
        trained, result = train_run(config, out, progress=progress)
        samples = sample(trained, progress=progress)  # [N, C, H, W] in [-1, 1]
        save_samples(samples, out / "samples.png", out / "samples.npz")
        progress.end_trial()
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    print(
        f"trained {config.architecture.name} with metric {config.metric.label} for "
        f"{result.step} steps{resumed} in {result.wall_s:.1f}s "
        f"({result.images_per_s:.0f} images/s, {trained.num_params:,} parameters)"
    )
    print(f"checkpoint: {out / 'checkpoint.pt'}")
    print(f"samples: {out / 'samples.png'} (grid), {out / 'samples.npz'} ({samples.shape[0]})")
    return 0
