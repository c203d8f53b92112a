"""`bench perf`: throughput on this machine, reported as ratios measured side by side in one run.

- models: training images/s per architecture, DDIM sampling images/s, cas-dm / ddpm step time;
- options: training images/s per speed option (train.precision, channels_last, fused_adamw,
  tf32, compile) against fp32 and against diffusers' UNet2DModel of the same shape;
- distributed: one trial over N processes (torchrun, DDP) against one process;
- workers: N training processes side by side (as N `bench run` workers on one machine) against
  one alone, with torch's default threads and with `bench run`'s thread policy;
- harness: one quickstart cell through `bench run` against a bare script doing the same
  training, sampling and scoring with the library, fresh processes, interleaved repetitions;
- evaluation: the full metric set from one feature pass against clean-fid's compute_fid +
  compute_kid (and against its cheapest one-pass FID + KID) on the same images with the same
  network and weights, medians of interleaved repetitions, plus peak memory.
"""

import argparse
import json

from rich.console import Console
from rich.table import Table

from bench.errors import BenchError
from bench.evaluation.benchmark import evaluation_benchmark
from bench.perf import distributed_benchmark, model_benchmarks, options_benchmark
from bench.perf_harness import harness_benchmark
from bench.perf_workers import workers_benchmark
from bench.trial import resolve_device

SUITES = ("models", "options", "distributed", "workers", "harness", "evaluation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SUITES,
        default=list(SUITES),
        help="which benchmarks to run (default: all)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument(
        "--steps", type=int, default=20, help="timed training steps per model (default: 20)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the options benchmark's torch.compile row (default: on CUDA only)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=16,
        help="image side of the options benchmark (default: 16)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="batch size of the options benchmark (default: 64)",
    )
    parser.add_argument(
        "--nproc", type=int, default=2, help="processes for the DDP benchmark (default: 2)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes side by side for the workers benchmark"
    )
    parser.add_argument(
        "--harness-steps",
        type=int,
        default=None,
        help="training steps of the harness benchmark's cell (default: the quickstart's 250)",
    )
    parser.add_argument(
        "--harness-repeats",
        type=int,
        default=3,
        help="interleaved repetitions of `bench run` and the bare script; medians are compared",
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        default=None,
        help="images scored by both evaluators (default: 10000 on CUDA, 100 on CPU, where "
        "Inception runs at about 5 images/s)",
    )
    parser.add_argument(
        "--eval-repeats",
        type=int,
        default=3,
        help="interleaved repetitions of ours and clean-fid's workflow; medians are compared",
    )
    parser.add_argument(
        "--eval-prep-workers",
        type=int,
        default=-1,
        help="processes resizing ahead of the network in our pass (eval.prep_workers; default "
        "-1: automatic, up to 8 on a GPU, none on a CPU); compare 0 against the default on a GPU",
    )
    parser.add_argument(
        "--eval-channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="our pass channels-last (eval.channels_last; default) or, with "
        "--no-eval-channels-last, in clean-fid's NCHW layout, as clean-fid runs",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="use random Inception weights (no download; the throughput is the same)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.epilog = (
        "Run time: the evaluation suite dominates on a CPU, where its two Inception passes over "
        "--eval-images images run at about 5 images/s (about a minute at the default 100, "
        "plus a one-time weights download unless --random-weights); on a GPU the 10,000 "
        "images take minutes. The harness suite runs one quickstart cell "
        "2 x --harness-repeats + 1 times (minutes on a CPU; --harness-steps shortens it). "
        "Use --only models for a quick look."
    )


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.steps < 1:
        raise BenchError(f"--steps must be >= 1, got {args.steps}")
    eval_images = args.eval_images or (10_000 if device.type == "cuda" else 100)
    if eval_images < 1:
        raise BenchError(f"--eval-images must be >= 1, got {eval_images}")
    if args.harness_steps is not None and args.harness_steps < 1:
        raise BenchError(f"--harness-steps must be >= 1, got {args.harness_steps}")
    if args.harness_repeats < 1:
        raise BenchError(f"--harness-repeats must be >= 1, got {args.harness_repeats}")
    if args.eval_repeats < 1:
        raise BenchError(f"--eval-repeats must be >= 1, got {args.eval_repeats}")
    if args.eval_prep_workers < -1:
        raise BenchError(
            f"--eval-prep-workers must be -1 (automatic), 0 (none) or more, got "
            f"{args.eval_prep_workers}"
        )

    console = Console(stderr=True, quiet=args.json)
    rows: list[dict] = []
    if "models" in args.only:
        console.print("[bold]models[/]: training and sampling throughput ...")
        rows += model_benchmarks(device, steps=args.steps, progress=console.print)
    if "options" in args.only:
        console.print("[bold]options[/]: training throughput per speed option ...")
        rows += options_benchmark(
            device,
            steps=args.steps,
            batch_size=args.batch_size,
            resolution=args.resolution,
            compile=args.compile,
            progress=console.print,
        )
    if "distributed" in args.only:
        console.print(f"[bold]distributed[/]: {args.nproc} processes against 1 ...")
        rows += distributed_benchmark(args.nproc, device, steps=max(5, args.steps // 2))
    if "workers" in args.only:
        console.print(f"[bold]workers[/]: {args.workers} side by side against 1 alone ...")
        rows += workers_benchmark(args.workers, steps=args.steps)
    if "harness" in args.only:
        console.print("[bold]harness[/]: one cell through `bench run` against a bare script ...")
        result = harness_benchmark(steps=args.harness_steps, repeats=args.harness_repeats)
        rows.append({"benchmark": "harness", **result})
    if "evaluation" in args.only:
        console.print(f"[bold]evaluation[/]: {eval_images} images, ours against clean-fid ...")
        result = evaluation_benchmark(
            eval_images,
            32,
            random_weights=args.random_weights,
            device=device,
            repeats=args.eval_repeats,
            prep_workers=args.eval_prep_workers,
            channels_last=args.eval_channels_last,
        )
        rows.append({"benchmark": "evaluation", **result})

    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    out = Console()
    for kind in dict.fromkeys(row["benchmark"] for row in rows):
        selected = [row for row in rows if row["benchmark"] == kind]
        columns = list(dict.fromkeys(key for row in selected for key in row if key != "benchmark"))
        if len(selected) == 1:  # one wide row (evaluation): a key / value table reads better
            table = Table("measure", "value", title=kind)
            for column in columns:
                table.add_row(column, _cell(selected[0][column]))
        else:
            table = Table(*columns, title=kind)
            for row in selected:
                table.add_row(*(_cell(row.get(column)) for column in columns))
        out.print(table)
    return 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)
