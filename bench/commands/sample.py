"""`bench sample CHECKPOINT`: sample with a checkpoint's EMA weights into an ADM .npz and a grid."""

import argparse
import dataclasses
from pathlib import Path

from bench.errors import BenchError
from bench.progress import make_progress
from bench.trial import load_trained, sample, save_samples
from casdm.checkpoint import CheckpointError, UnsafeCheckpointError
from casdm.config import ConfigError, SampleConfig, from_dict, to_dict

# SampleConfig / RunConfig keys -> the flags that set them, for error messages.
FLAGS = {
    "num_samples": "--n",
    "sampler": "--sampler",
    "steps": "--steps",
    "eta": "--eta",
    "batch_size": "--batch-size",
    "seed": "--seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint.pt of `bench run`/`train`")
    parser.add_argument("--n", type=int, help="number of samples (default: the run's)")
    parser.add_argument(
        "--out",
        type=Path,
        help="PATH.npz, or a folder for samples.npz (default: next to the checkpoint, named "
        "after the sampler, steps and N); a PNG grid is written beside it",
    )
    parser.add_argument("--sampler", help="ddim or ddpm (default: the run's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument(
        "--eta", type=float, help="the ddim sampler's eta (default: the run's, else 0)"
    )
    parser.add_argument("--seed", type=int, help="seed of x_T and the sampler (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        trained = load_trained(args.checkpoint, args.device)
    except CheckpointError as err:
        # load_checkpoint's remedy (delete it, the run retrains) is for a trial's own file.
        if isinstance(err, UnsafeCheckpointError) or "retrained from step 0" not in str(err):
            raise
        kind = err.reason.split(" (", 1)[0]
        raise BenchError(
            f"{args.checkpoint} is not a checkpoint bench can sample from ({kind}); pass the "
            "checkpoint.pt of a `bench run` trial (results/STUDY/trials/CELL/checkpoint.pt) "
            "or of a `bench train --out DIR` run (DIR/checkpoint.pt)"
        ) from None
    changes = {
        "num_samples": args.n,
        "sampler": args.sampler,
        "steps": args.steps,
        "eta": args.eta,
        "batch_size": args.batch_size,
    }
    changes = {key: value for key, value in changes.items() if value is not None}
    try:
        run_sampler = trained.config.sample
        # Another sampler starts from its own default options, not the run's sampler's.
        kept = to_dict(run_sampler)
        if args.sampler not in (None, run_sampler.sampler):
            for key in to_dict(run_sampler.options):
                del kept[key]
        cfg = from_dict(SampleConfig, {**kept, **changes})
        if args.eta is not None and "eta" not in to_dict(cfg.options):
            raise ConfigError("eta", f"sampler {cfg.sampler!r} takes no eta (ddim does)")
        seed = trained.config.seed if args.seed is None else args.seed
        trained.config = dataclasses.replace(trained.config, sample=cfg, seed=seed)
        trained.config.validate()
    except ConfigError as err:
        flag = FLAGS.get(err.key.rpartition(".")[2], err.key)
        raise BenchError(f"{flag}: {str(err).split(': ', 1)[-1]}") from None
    name = f"samples_{cfg.sampler}{cfg.steps}_n{cfg.num_samples}.npz"
    out = args.out or args.checkpoint.parent / name
    npz = out if out.suffix == ".npz" else out / "samples.npz"
    with make_progress(args.quiet) as progress:
        images = sample(trained, cfg, progress=progress)  # [N, C, H, W] in [-1, 1]
    save_samples(images, npz.with_suffix(".png"), npz)
    print(f"{images.shape[0]} samples ({cfg.sampler}, {cfg.steps} steps) -> {npz}")
    print(f"grid of the first {min(images.shape[0], 64)} -> {npz.with_suffix('.png')}")
    return 0
