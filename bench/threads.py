"""How many CPU threads a worker gives torch: the cores this process may use, shared fairly by
the `bench run` workers alive on this machine.

OpenMP teams collapse when they outnumber the cores: with one core busy elsewhere, a 2-thread
team trained the quickstart UNet up to 20x slower than one thread, while on a quiet machine 2
threads gained only 5-30% over 1. So each worker takes max(1, cores // workers) threads, where

- cores: the CPUs this process may run on (its affinity mask), capped by a cgroup CPU quota
  (containers, Slurm) when there is one;
- workers: the live `bench run` processes on this machine (every study, every torchrun rank),
  each registered by a small file in a per-user folder of the system's temporary directory,
  recounted before each trial and every few seconds during training, so a worker that starts
  later makes the earlier ones shrink their teams;
- and never more than the cores left by other programs: the 1-minute load average minus the
  threads the registered workers run (the cost is lopsided: a thread too few loses at most
  a third of the speed, a team larger than the idle cores loses up to 20x).

The choice covers everything a worker runs on its CPU: training, sampling and the evaluator
share torch's one intra-op pool (the data are in-memory tensors: no DataLoader workers), and the
inter-op pool is kept to one thread (nothing here runs ops concurrently).

Overrides, strongest first: `bench run --threads N`, the CASDM_THREADS environment variable,
an explicit OMP_NUM_THREADS.
"""

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import leases
from casdm.errors import InputError

ENV = "CASDM_THREADS"
# Seconds between two recounts of the live workers while a trial trains.
REFRESH_S = 5.0


def registry_dir() -> Path:
    """The folder of this user's live-worker files on this machine."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"casdm-bench-workers-{uid}"


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 cpu.max or v1 CFS), None if none."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":  # cgroup v2
            try:
                quota, period = (root / path / "cpu.max").read_text().split()
            except (OSError, ValueError):
                continue
            if quota != "max":
                return int(quota) / int(period)
        elif "cpu" in controllers.split(","):  # cgroup v1
            for folder in (root / controllers, root / "cpu"):
                try:
                    quota = int((folder / path / "cpu.cfs_quota_us").read_text())
                    period = int((folder / path / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0:
                    return quota / period
    return None


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, int(limit) or 1)
    return max(1, cores)


def _write_entry(entry: Path, threads: int) -> None:
    temp = entry.with_suffix(".tmp")
    temp.write_text(json.dumps({**leases.this_process(), "threads": threads}))
    temp.replace(entry)  # readers never see half a file


@contextlib.contextmanager
def registered_worker(folder: Path | None = None) -> Iterator[Path]:
    """Count this process among the machine's live workers while the block runs."""
    folder = folder or registry_dir()
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / f"{os.getpid()}.json"
    _write_entry(entry, 0)
    try:
        yield entry
    finally:
        entry.unlink(missing_ok=True)


def live_workers(folder: Path | None = None) -> list[dict]:
    """The registered workers still alive ("threads": what each runs); dead ones' files go."""
    folder = folder or registry_dir()
    alive = []
    for entry in folder.glob("*.json"):
        try:
            owner = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue  # removed right now
        if leases.owner_gone(owner):
            entry.unlink(missing_ok=True)
        else:
            alive.append(owner)
    return alive


def other_load(workers: list[dict]) -> float:
    """Runnable threads of other programs: the 1-minute load average less the workers' threads."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0.0
    return max(0.0, load - sum(int(w.get("threads", 0)) for w in workers))


def policy_threads(cores: int, workers: list[dict], busy: float) -> int:
    """max(1, cores // workers), at most the cores `busy` (other programs' load) leaves idle."""
    share = cores // max(1, len(workers))
    idle = cores - math.floor(busy + 0.5)
    return max(1, min(share, idle))


def requested_threads(option: int | None) -> tuple[int | None, str]:
    """The thread count fixed by --threads, CASDM_THREADS or OMP_NUM_THREADS (None if none)."""
    for value, source in (
        (option, "--threads"),
        (os.environ.get(ENV), ENV),
        (os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS"),
    ):
        if value is None or value == "":
            continue
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise InputError(f"{source} must be an integer >= 1, got {value!r}")
        return threads, source
    return None, "policy"


@dataclass
class ThreadPolicy:
    """The threads this worker gives torch; `refresh` recounts the workers (policy only)."""

    entry: Path
    fixed: int | None = None  # set by an override: never recounted
    source: str = "policy"
    threads: int = 0
    checked: float = 0.0

    def choose(self) -> int:
        if self.fixed is not None:
            return self.fixed
        workers = live_workers(self.entry.parent)
        return policy_threads(available_cores(), workers, other_load(workers))

    def apply(self, *, force: bool = True) -> int:
        """Set torch's threads (again if the count changed); at most every REFRESH_S unless
        forced."""
        now = time.monotonic()
        if not force and now - self.checked < REFRESH_S:
            return self.threads
        self.checked = now
        threads = self.choose()
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
            _write_entry(self.entry, threads)
        return threads


_current: ThreadPolicy | None = None


@contextlib.contextmanager
def worker_threads(option: int | None = None, folder: Path | None = None) -> Iterator[ThreadPolicy]:
    """Register this process as a worker and set torch's threads by the policy for the block."""
    global _current
    import torch  # here, not at import: `bench run` starts its MLflow sidecar before torch

    fixed, source = requested_threads(option)
    with contextlib.suppress(RuntimeError):  # already set, or inter-op work already ran
        torch.set_num_interop_threads(1)
    previous, saved = _current, torch.get_num_threads()
    with registered_worker(folder) as entry:
        policy = _current = ThreadPolicy(entry, fixed=fixed, source=source)
        policy.apply()
        try:
            yield policy
        finally:
            _current = previous
            torch.set_num_threads(saved)


def refresh(*, force: bool = False) -> None:
    """Recount the workers and resize torch's pool (a no-op outside `worker_threads`)."""
    if _current is not None:
        _current.apply(force=force)
