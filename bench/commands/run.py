"""`bench run --study NAME`: create or join the study's Optuna study and run its trials.

Light at import, on purpose: this module imports no torch, no Optuna and not the runner (the CLI
imports it to parse the command line). `run` starts the MLflow sidecar (bench.tracking_sidecar)
first, so that MLflow's imports and store set-up run in the child while this process imports
torch and the runner and prepares the study; keep heavy imports out of module level here.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from bench import threads
from bench.commands import add_overrides
from bench.errors import BenchError
from bench.leases import LEASE_S
from bench.results import describe_storage
from bench.study import load_study

if TYPE_CHECKING:
    from bench.planning import Plan
    from bench.tracking_sidecar import SidecarBackend
    from bench.worker import RunSummary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study", required=True, help="a study name (studies/NAME.toml) or a .toml path"
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage shared by all workers: sqlite:///PATH.db (default "
        "sqlite:///RESULTS/optuna.db, one machine), journal:///PATH.log or a path ending in "
        ".log (a journal file, fine on NFS), or a database URL such as "
        "postgresql+psycopg2://user:password@host/db",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default sqlite:///RESULTS/mlflow.db); "
        "http://HOST:PORT for a running `mlflow server`",
    )
    parser.add_argument(
        "--n-trials", type=int, help="run at most N trials in this process (default: until done)"
    )
    parser.add_argument(
        "--device", help="run every trial on this device: auto (default), cpu, cuda, cuda:N"
    )
    add_overrides(parser, "repeatable; checked first")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the pending trials and an estimate of their cost; run and create nothing",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars; print only a final summary"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="folder for the default databases, trial folders and caches (default: results)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the cells whose trials failed with an error (NaN loss, out of memory, "
        "a crash); cells of killed or interrupted workers resume without it",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=LEASE_S,
        metavar="SECONDS",
        help="take over a RUNNING trial whose worker sent no heartbeat for this long (default "
        f"{LEASE_S:.0f}; a dead worker on this machine is detected at once)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=f"torch CPU threads per process (default: the cores this process may use divided "
        f"by the `bench run` workers alive on this machine, recounted before each trial; "
        f"also {threads.ENV}=N)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="K",
        help="run each trial on K processes (DDP over K GPUs, or K CPU processes with gloo): "
        "re-runs this command under `python -m torch.distributed.run --standalone "
        "--nproc_per_node K`; for several machines per trial, call torchrun yourself",
    )


def run(args: argparse.Namespace) -> int:
    with _tracking_sidecar(args) as tracking:
        study = load_study(args.study, args.overrides)  # checked once, not by each process
        if args.nproc is not None and not args.dry_run:  # a dry run plans in this process
            _check_nproc(args, study.base.get("device", "auto"))
            if args.nproc > 1:
                return subprocess.run(torchrun_command(args)).returncode
        with threads.worker_threads(args.threads), _interruptible():
            from bench.runner import run_study  # torch and the runner: while the sidecar starts

            summary = run_study(
                study,
                storage=args.storage,
                tracking_uri=args.tracking_uri,
                n_trials=args.n_trials,
                device=args.device,
                quiet=args.quiet,
                dry_run=args.dry_run,
                results=args.results,
                retry_failed=args.retry_failed,
                lease_s=args.lease,
                tracking=tracking,
            )
    if summary.plan is not None:
        print_plan(summary.plan)
        return 0
    if summary.rank != 0:
        return 0  # under torchrun rank 0 reports for all
    print_summary(summary, quiet=args.quiet)
    return 1 if summary.failed else 0


@contextlib.contextmanager
def _tracking_sidecar(args: argparse.Namespace) -> Iterator["SidecarBackend | None"]:
    """The MLflow sidecar of the process that tracks (bench.tracking_sidecar), started now and
    ended with the block; None in the processes that make no MLflow call (a dry run, the
    --nproc launcher: its torchrun ranks track, torchrun ranks other than 0) and where it is
    turned off (CASDM_MLFLOW_SIDECAR=0: MLflow in this process)."""
    from bench.tracking_sidecar import SidecarBackend, enabled

    launcher = args.nproc is not None and args.nproc > 1
    if args.dry_run or launcher or os.environ.get("RANK", "0") != "0" or not enabled():
        yield None
        return
    from bench.tracking_backend import tracking_uri_for

    with SidecarBackend(args.tracking_uri or tracking_uri_for(args.results)) as sidecar:
        yield sidecar


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and a scheduler's SIGTERM (preemption) raise KeyboardInterrupt while `bench run`
    runs: the trial is marked interrupted, and resumes from its checkpoint next time. SIGINT
    is set too, as a process started in the background inherits it ignored."""
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, _interrupt) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # SIGINT or SIGTERM


def _check_nproc(args: argparse.Namespace, study_device: str) -> None:
    """Refuse a --nproc that torchrun would only fail on, once per process."""
    if args.nproc < 1:
        raise BenchError(f"--nproc must be >= 1, got {args.nproc}")
    if "WORLD_SIZE" in os.environ:
        raise BenchError(
            f"--nproc starts torchrun itself, but this process already runs under torchrun "
            f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); leave --nproc out"
        )
    import torch

    from bench.trial import resolve_device

    device = resolve_device(args.device or study_device)
    if device.type == "cuda" and args.nproc > torch.cuda.device_count():
        raise BenchError(
            f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} GPU(s), "
            "and each process needs its own; use at most that many, or --device cpu"
        )


def torchrun_command(args: argparse.Namespace) -> list[str]:
    """This `bench run` under torchrun with args.nproc processes (every option but --nproc)."""
    forwarded = ["run", "--study", args.study]
    options = [
        ("--storage", args.storage),
        ("--tracking-uri", args.tracking_uri),
        ("--n-trials", args.n_trials),
        ("--device", args.device),
        ("--threads", args.threads),
    ]
    forwarded += [item for flag, value in options if value is not None for item in (flag, value)]
    forwarded += [item for override in args.overrides for item in ("--set", override)]
    forwarded += ["--quiet"] * args.quiet + ["--retry-failed"] * args.retry_failed
    forwarded += ["--results", str(args.results), "--lease", str(args.lease)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    return [sys.executable, *launcher, "-m", "bench", *map(str, forwarded)]


def _duration(seconds: float) -> str:
    """1234.5 -> '20m 35s'."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def print_plan(plan: "Plan") -> None:
    """The dry run's pending trials, their cost and the weights they need."""
    console = Console()
    table = Table(title=f"{plan.study}: {len(plan.cells)} of {plan.total} trials pending")
    for column in ("trial", "train images", "samples", "sampling evals", "time (rough)"):
        table.add_column(column, justify="left" if column == "trial" else "right")
    for cost in plan.cells:
        table.add_row(
            cost.cell,
            f"{cost.train_images:,}",
            f"{cost.samples:,}",
            f"{cost.sampling_evals:,}",
            _duration(cost.seconds),
        )
    console.print(table)
    console.print(
        f"total: {sum(c.train_images for c in plan.cells):,} training images "
        f"(steps x batch size), {sum(c.samples for c in plan.cells):,} samples, about "
        f"{_duration(plan.seconds)} on {plan.device}: {plan.device_hours:,.2f} device-hours "
        f"({plan.device}; N workers on N such devices take about 1/N of it)",
        highlight=False,
    )
    if plan.device == "cpu":
        console.print(
            "this is a CPU estimate, measured on this machine's CPU; for a GPU estimate run the "
            "dry run on the GPU machine (--device cuda)",
            highlight=False,
        )
    console.print(f"time estimate {plan.method}", style="dim", highlight=False)
    for name, status in plan.weights.items():
        hint = "" if status == "present" else f" (run `bench weights fetch {name}`)"
        console.print(f"weights {name}: {status}{hint}", highlight=False)
    console.print("dry run: nothing was run or created", highlight=False)


def print_summary(summary: "RunSummary", *, quiet: bool) -> None:
    """What this worker ran: a rich table, or plain lines with --quiet."""
    head = (
        f"study {summary.study}: {summary.done} of {summary.total} trials complete; "
        f"this run: {len(summary.trials) - summary.failed} complete, {summary.failed} failed"
    )

    where = f"storage: {describe_storage(summary.storage)}; tracking: {summary.tracking_uri}"
    if quiet:
        print(head)
        for t in summary.trials:
            value = "" if t.value is None else f" value={t.value:.6g}"
            error = f": {t.error}" if t.error else ""
            print(f"  trial {t.number} {t.cell}: {t.state}{value} ({_duration(t.wall_s)}){error}")
        print(where)
        _print_held_back(summary, print)
        return

    console = Console()
    # The head above the table, not as its title: a title wider than the table wraps centred.
    console.print(head, highlight=False)
    if summary.trials:
        table = Table()
        for column in ("trial", "cell", "state", "objective", "time"):
            table.add_column(column, overflow="fold")
        for t in summary.trials:
            style = "" if t.state == "COMPLETE" else "red"
            value = "" if t.value is None else f"{t.value:.4g}"
            table.add_row(str(t.number), t.cell, t.state, value, _duration(t.wall_s), style=style)
        console.print(table)
    # One location a line, never broken inside a path (a terminal wraps it whole, if at all).
    for line in where.split("; "):
        console.print(line, style="dim", highlight=False, soft_wrap=True)
    _print_held_back(summary, lambda text: console.print(text, style="yellow", highlight=False))


def _print_held_back(summary: "RunSummary", say: Callable[[str], object]) -> None:
    """The failed cells this run left alone, and how to run them again."""
    if summary.held_back:
        say(
            f"{len(summary.held_back)} cell(s) failed in an earlier run and were not retried "
            f"({', '.join(summary.held_back)}); `bench show {summary.study}` gives the errors, "
            f"`bench run --study {summary.study} --retry-failed` runs them again"
        )
