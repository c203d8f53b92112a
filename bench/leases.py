"""Who runs a trial, and the rule that decides when a RUNNING trial has lost its worker.

A worker records its process ("owner") and a heartbeat on every trial it holds; a trial whose
owner is gone (on its own machine) or whose heartbeat is older than the lease is stale. The
lease rule and what happens to a stale trial: the claim protocol in docs/DESIGN.md.
"""

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.results import HEARTBEAT_GRACE_S, HEARTBEAT_INTERVAL_S

if TYPE_CHECKING:
    import optuna

# Seconds without a heartbeat after which a RUNNING trial is taken over (anywhere); also the
# grace period of Optuna's own heartbeat on RDB storages, so both rules agree.
LEASE_S = float(HEARTBEAT_GRACE_S)


def _boot_id() -> str:
    """This boot of this machine (Linux); '' where the system does not say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux); None if there is none.

    Elsewhere "" for any live process (the pid alone then identifies it).
    """
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Field 22 (starttime); the command name (field 2) may hold spaces, so count after ')'.
        return stat.rsplit(")", 1)[1].split()[19]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return ""  # alive, someone else's
    return ""


def this_process() -> dict[str, Any]:
    """The "owner" attr of the trials this process runs."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "started": _started(pid)}


def owner_gone(owner: dict[str, Any]) -> bool:
    """Whether `owner` (an "owner" attr) is known to be dead: only decidable on its machine."""
    if owner.get("host") != socket.gethostname():
        return False
    if owner.get("boot") != _boot_id():
        return True  # the machine rebooted since
    return _started(int(owner["pid"])) != owner.get("started")


def stale_reason(trial: "optuna.trial.FrozenTrial", lease_s: float, now: float) -> str | None:
    """Why the RUNNING `trial` has lost its worker (the lease rule), or None if it has not."""
    owner = trial.user_attrs.get("owner")
    if isinstance(owner, dict) and owner_gone(owner):
        return (
            f"worker lost: process {owner['pid']} on {owner['host']}, which ran trial "
            f"{trial.number}, is gone (killed or crashed)"
        )
    last = trial.user_attrs.get("heartbeat")
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    if last is not None and now - float(last) > lease_s:
        where = f" (process {owner['pid']} on {owner['host']})" if isinstance(owner, dict) else ""
        return (
            f"worker lost: trial {trial.number}'s worker{where} sent no heartbeat for "
            f"{now - float(last):.0f} s, more than the {lease_s:.0f} s lease"
        )
    return None


class TakenOver(RuntimeError):
    """This worker's trial was failed by another worker (its lease expired): stop working on it."""


@dataclass
class Lease:
    """A held trial: `lost` is set once another worker has taken it over."""

    trial_id: int
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise TakenOver if the trial was taken over (called between training steps)."""
        if self.lost.is_set():
            raise TakenOver(
                f"trial (id {self.trial_id}) was taken over by another worker after this "
                "worker's heartbeats stopped reaching the storage; it stops here"
            )


@contextlib.contextmanager
def held(storage: "optuna.storages.BaseStorage", trial_id: int) -> Iterator[Lease]:
    """Own the trial: record this process as its owner and beat its heart while the block runs.

    A beat that finds the trial finished by someone else sets `Lease.lost`.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import RDBStorage

    storage.set_trial_user_attr(trial_id, "owner", this_process())
    lease = Lease(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
                if isinstance(storage, RDBStorage):
                    storage.record_heartbeat(trial_id)
            except UpdateFinishedTrialError:
                lease.lost.set()
                return
            except Exception:
                pass  # a missed beat is retried at the next one; the lease is long
            if stop.wait(HEARTBEAT_INTERVAL_S):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
