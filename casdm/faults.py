"""Fault injection: make a process crash, diverge or be interrupted at a chosen point.

The reliability tests start real `bench run` processes and need their faults to happen at a
known moment (a SIGKILL at training step 3, or while the second checkpoint is being written),
not after a racy sleep. The code that can fail calls `inject(POINT, n)` at named points; the
environment variable CASDM_FAULTS chooses what happens there. When it is unset (always, outside
tests) `inject` returns None after one dictionary lookup.

CASDM_FAULTS is a comma-separated list of `ACTION@POINT[=N][/SCOPE]`:
- POINT: "train.step" (n: the step just completed, its checkpoint written), "train.loss" (n:
  the step being computed), "write:NAME" (n: the n-th atomic write of a file NAME in this
  process, after its temporary file is written and before it replaces NAME), "sample" and
  "score" (n: 1, the first time each runs in the scope).
- ACTION: kill (SIGKILL this process: no clean-up runs), interrupt (SIGINT: as Ctrl-C),
  terminate (SIGTERM: as a scheduler's preemption), raise (RuntimeError), oom
  (torch.OutOfMemoryError), nan (inject returns "nan"; train.loss then poisons the loss).
- N: fire when n equals N (default 1).
- SCOPE: fire only inside `scope(SCOPE)` (bench runs each trial in the scope of its folder
  name, e.g. "cas-dm-l2"); without it the fault fires in any scope.

Example: `CASDM_FAULTS="kill@train.step=3/ddpm-none"` kills the worker right after step 3 of the
ddpm-none trial.
"""

import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

ENV = "CASDM_FAULTS"
ACTIONS = ("kill", "interrupt", "terminate", "raise", "oom", "nan")
_SIGNALS = {"kill": "SIGKILL", "interrupt": "SIGINT", "terminate": "SIGTERM"}  # POSIX names

_scope: list[str] = []
_hits: Counter[str] = Counter()


@dataclass(frozen=True)
class Fault:
    action: str
    point: str
    n: int = 1
    scope: str | None = None


def parse(text: str) -> list[Fault]:
    """CASDM_FAULTS's value as faults; a malformed entry is a ValueError naming it."""
    faults = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        action, at, rest = entry.partition("@")
        where, _, scope = rest.partition("/")
        point, _, n = where.partition("=")
        if not at or action not in ACTIONS or not point or (n and not n.isdigit()):
            raise ValueError(
                f"{ENV} entry {entry!r} is not ACTION@POINT[=N][/SCOPE] with ACTION one of "
                f"{', '.join(ACTIONS)}"
            )
        faults.append(Fault(action, point, int(n or 1), scope or None))
    return faults


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Faults with a /SCOPE fire only inside the scope of that name."""
    _scope.append(name)
    try:
        yield
    finally:
        _scope.pop()


def inject(point: str, n: int | None = None) -> str | None:
    """Fire the fault set for `point` at `n` (default: how often `point` was reached here).

    Signals, raise and oom act at once; "nan" is returned for the caller to apply;
    None when no fault fires (always, unless CASDM_FAULTS is set).
    """
    text = os.environ.get(ENV)
    if not text:
        return None
    key = f"{_scope[-1] if _scope else ''}/{point}"
    _hits[key] += 1
    n = _hits[key] if n is None else n
    current = _scope[-1] if _scope else None
    for fault in parse(text):
        if fault.point != point or fault.n != n or fault.scope not in (None, current):
            continue
        if fault.action in _SIGNALS:
            # Delivered before os.kill returns; Python's handler runs at the next bytecode.
            os.kill(os.getpid(), getattr(signal, _SIGNALS[fault.action]))
            return None
        if fault.action == "raise":
            raise RuntimeError(f"injected fault at {point} (n={n}) by {ENV}")
        if fault.action == "oom":
            import torch

            raise torch.OutOfMemoryError(f"injected out-of-memory at {point} (n={n}) by {ENV}")
        return fault.action
    return None
