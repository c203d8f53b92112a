"""`bench eval SAMPLES --dataset NAME | --reference FOLDER|NPZ`: score a folder or .npz of samples
against a dataset split, every image of a folder (as clean-fid's compute_fid(SAMPLES, FOLDER)) or
an ADM reference batch."""

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import (
    EVALUATORS,
    build_evaluator,
    protocols,
    reference_statistics,
    score,
    score_label,
)
from bench.evaluation.evaluators import DEFAULT_FID_PROTOCOL, FID_PROTOCOLS
from bench.progress import make_progress
from bench.trial import resolve_device
from casdm.config import DataConfig
from casdm.data import read_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig()
    parser.add_argument(
        "samples", type=Path, help="a folder of same-sized images or an ADM .npz ('arr_0')"
    )
    parser.add_argument(
        "--dataset",
        help="the dataset whose reference split the samples are scored against (digits, "
        "cifar10, folder:PATH, npz:PATH; a folder: or npz: dataset is split 90/10 like a "
        "training set, so its train split is 90%% of the images); loaded at the samples' "
        "resolution. Required unless --reference is given",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="score against this instead of a dataset split: a folder of images (all of them, "
        "in clean-fid's file order: FID and KID equal clean-fid's compute_fid/compute_kid("
        "SAMPLES, FOLDER, mode=PROTOCOL)) or an ADM reference batch .npz ('arr_0' and/or mu, "
        "sigma, mu_s, sigma_s)",
    )
    parser.add_argument(
        "--evaluator",
        help="inception or classifier (default: classifier for digits, inception otherwise)",
    )
    parser.add_argument(
        "--protocol",
        choices=FID_PROTOCOLS,
        help="the inception evaluator's protocol, reproducing clean-fid's compute_fid mode "
        f"exactly (default: {DEFAULT_FID_PROTOCOL}, the TensorFlow FID convention of published "
        "diffusion numbers)",
    )
    parser.add_argument("--n", type=int, help="score only the first N samples (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random Inception weights, for smoke runs only: the numbers mean nothing and every "
        "output says so",
    )
    parser.add_argument(
        "--reference-split",
        choices=("train", "test"),
        default=defaults.reference_split,
        help=f"the dataset split the reference statistics come from (default: "
        f"{defaults.reference_split})",
    )
    parser.add_argument(
        "--reference-images",
        type=int,
        default=defaults.reference_images,
        help="cap on reference images (default: 0, the whole split)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="images per feature batch"
    )
    parser.add_argument(
        "--prep-workers",
        type=int,
        default=defaults.prep_workers,
        help="processes running the evaluator's CPU preprocessing (clean-fid's resize) ahead of "
        "its network: 0 none, -1 automatic (default: on a GPU min(8, cores - 1), on a CPU 0); "
        "never changes a score",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=defaults.channels_last,
        help="run the feature network channels-last (default; on a CPU the Inception pass is "
        "about 1.4x faster) or, with --no-channels-last, in clean-fid's NCHW layout, whose "
        "features equal clean-fid's bit for bit on a CPU; the two differ in round-off only",
    )
    parser.add_argument(
        "--is-protocol",
        choices=("adm", "torch-fidelity"),
        default=defaults.is_protocol,
        help="Inception Score protocol: adm (guided-diffusion's evaluator, chunks of 5,000 "
        "samples) or torch-fidelity (--is-splits shuffled splits) "
        f"(default: {defaults.is_protocol})",
    )
    parser.add_argument(
        "--is-splits",
        type=int,
        default=defaults.is_splits,
        help=f"splits of --is-protocol torch-fidelity (default: {defaults.is_splits})",
    )
    parser.add_argument("--data-dir", help="where downloadable datasets are stored")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="evaluator and reference-statistics cache (default: results/cache where a "
        "results/ folder exists, as in the checkout, else $XDG_CACHE_HOME/casdm-bench, by "
        "default ~/.cache/casdm-bench)",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def default_cache_dir() -> Path:
    """results/cache beside the studies' results, else the user's cache folder (never a new
    results/ in whatever folder `bench eval` happens to run in)."""
    import os

    if Path("results").is_dir():
        return Path("results") / "cache"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "casdm-bench"


def fit_channels(images: Any, channels: tuple[int, ...], source: Path, label: str) -> Any:
    """Images [N, C, H, W] with a channel count the evaluator takes, or BenchError saying how.

    RGB images whose three channels are equal (grayscale saved as RGB) become one channel, with
    a notice on stderr; anything else is refused with the way forward.
    """
    import sys

    from bench.errors import BenchError

    n, c, h, w = images.shape
    if c in channels:
        return images
    found = f"{source} holds {n} images of {w}x{h} pixels with {c} channel(s)"
    if c == 3 and 1 in channels:
        if bool((images[:, :1] == images[:, 1:]).all()):
            print(f"notice: {found}, all three equal: scored as grayscale", file=sys.stderr)
            return images[:, :1]
        raise BenchError(
            f"{found} (RGB, in colour); the {label} evaluator takes grayscale images (1 "
            "channel), like the dataset it was trained on. Convert them first (for a folder: "
            "PIL's Image.open(p).convert('L').save(p)), or score them with --evaluator "
            "inception, which takes both"
        )
    allowed = " or ".join(map(str, channels))
    raise BenchError(
        f"{found}; the {label} evaluator takes {allowed} channel(s): convert the images, or "
        "choose another --evaluator"
    )


def run(args: argparse.Namespace) -> int:
    # An unknown dataset or evaluator fails before any work.
    if args.dataset is None and args.reference is None:
        raise BenchError(
            "bench eval needs a reference: --dataset NAME (a dataset's reference split: "
            "digits, cifar10, folder:PATH, npz:PATH) or --reference FOLDER|NPZ (every image of "
            "a folder, or an ADM reference batch)"
        )
    if args.dataset is None:
        evaluator_name = args.evaluator or "inception"
        if evaluator_name != "inception":
            raise BenchError(
                f"--evaluator {evaluator_name} is trained on a dataset: give --dataset NAME with "
                "--reference, or score with --evaluator inception"
            )
    else:
        evaluator_name = args.evaluator or DataConfig(dataset=args.dataset).component.evaluator
    evaluator = EVALUATORS.get(evaluator_name)
    takes = {f.name for f in dataclasses.fields(evaluator.options)}
    if args.protocol and "protocol" not in takes:
        raise BenchError(
            f"--protocol {args.protocol} is an Inception protocol; the {evaluator_name} evaluator "
            "has its own (use --evaluator inception --protocol ...)"
        )
    if args.random_weights and not evaluator.required_weights(evaluator.options()):
        raise BenchError(
            f"--random-weights replaces pretrained weights; the {evaluator_name} evaluator "
            "has none to replace (use --evaluator inception --random-weights)"
        )
    images = read_images(args.samples)  # uint8 [N, C, H, W]
    if args.n is not None:
        if not 1 <= args.n <= len(images):
            raise BenchError(
                f"--n {args.n}: {args.samples} holds {len(images)} images; ask for 1 to "
                f"{len(images)}"
            )
        images = images[: args.n]
    _, _, height, width = images.shape
    if height != width and args.dataset is not None:
        raise BenchError(
            f"{args.samples}: images are {width}x{height} (width x height); bench eval loads "
            "the reference dataset at one square resolution, so samples must be square (or "
            "score them against a folder of images with --reference FOLDER)"
        )
    data_kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    if args.dataset is not None:  # else the inception evaluator, which takes no dataset
        data_kwargs.update(dataset=args.dataset, resolution=height)
    data_cfg = DataConfig(**data_kwargs)
    eval_cfg = EvalConfig(
        evaluator=evaluator_name,
        reference_split=args.reference_split,
        reference_images=args.reference_images,
        reference=str(args.reference or ""),
        batch_size=args.batch_size,
        is_protocol=args.is_protocol,
        is_splits=args.is_splits,
        random_weights=args.random_weights,
        prep_workers=args.prep_workers,
        channels_last=args.channels_last,
        **({"protocol": args.protocol} if args.protocol else {}),
    )
    device = resolve_device(args.device)
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
        if not args.quiet:
            print(f"cache (evaluator, reference statistics): {args.cache_dir}", file=sys.stderr)
    with make_progress(args.quiet) as progress:
        evaluator = build_evaluator(eval_cfg, data_cfg, device=device, cache_dir=args.cache_dir)
        images = fit_channels(images, evaluator.channels, args.samples, evaluator.label)
        reference = reference_statistics(
            evaluator,
            data_cfg,
            eval_cfg,
            cache_dir=args.cache_dir,
            progress=progress.task("reference features"),
        )
        scores = score(
            images,
            evaluator,
            reference,
            is_protocol=eval_cfg.is_protocol,
            is_splits=eval_cfg.is_splits,
            batch_size=eval_cfg.batch_size,
            prep_workers=eval_cfg.prep_workers,
            progress=progress.task("sample features"),
        )
    result: dict[str, Any] = {
        "samples": str(args.samples),
        "n": len(images),
        "dataset": args.dataset if args.reference is None else None,
        "resolution": height,
        "evaluator": {
            "name": evaluator.name,
            "label": evaluator.label,
            "protocol": evaluator.protocol,
            "random_weights": evaluator.random_weights,
            "weights_hash": evaluator.weights_hash,
            "channels_last": evaluator.channels_last,
            "accuracy": getattr(evaluator, "accuracy", None),
        },
        "reference": reference.meta,
        "scores": {k: None if math.isnan(v) else v for k, v in scores.items()},
        "labels": {k: score_label(k, evaluator) for k in scores},
        "protocols": protocols(eval_cfg.is_protocol, eval_cfg.is_splits),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result, evaluator.random_weights)
    return 0


def reference_source(meta: dict[str, Any]) -> str:
    """What the samples were scored against, from the reference's metadata, in words."""
    if meta["source"] == "adm-npz":
        return f"the ADM reference batch {meta['npz']}"
    if meta["source"] == "folder":
        return f"all {meta['images']} images of the folder {meta['folder']}"
    split = f"{meta['dataset']} ({meta['split']} split, {meta['images']} images)"
    if meta["dataset"].startswith(("folder:", "npz:")):
        # Datasets without an official split are split 90/10 like training data.
        return (
            f"{split}: the seeded 90% {meta['split']} split of {meta['dataset']}, not all of "
            f"it; --reference {meta['dataset'].split(':', 1)[1]} scores against every image"
            if meta["split"] == "train"
            else f"{split}: the seeded 10% test split of {meta['dataset']}"
        )
    return split


def _print_table(result: dict[str, Any], random_weights: bool) -> None:
    console = Console()
    source = reference_source(result["reference"])
    evaluator = result["evaluator"]
    console.print(
        f"{result['n']} samples from {result['samples']} scored against {source} "
        f"by {evaluator['label']}",
        highlight=False,
    )
    if evaluator["accuracy"] is not None:
        console.print(f"held-out accuracy of the classifier: {100 * evaluator['accuracy']:.1f}%")
    if random_weights:
        console.print(
            "[bold red]RANDOM WEIGHTS[/]: a smoke run; these numbers are not comparable to any "
            "published score"
        )
    table = Table()
    table.add_column("score")
    table.add_column("value", justify="right")
    for key, value in result["scores"].items():
        shown = "n/a (the reference holds no images)" if value is None else f"{value:.4f}"
        table.add_row(result["labels"][key], shown)
    console.print(table)
