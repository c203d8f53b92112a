"""Checkpoints as plain state: written atomically, read back with `torch.load(weights_only=True)`.

A checkpoint holds only state dicts, tensors (RNG states included), ints, floats, bools, strings
(the run's config as a JSON string) and lists/dicts of those: never pickled code or objects, so
loading one cannot execute anything and a file from another version fails loudly, not silently.
"""

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from casdm.errors import InputError
from casdm.files import atomic_write

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


class CheckpointError(InputError):
    """A checkpoint file that is truncated, corrupt, not ours, or does not fit the run.

    `reason` is the short why ("truncated or corrupt (EOFError: ...)"), without the remedy.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding pickled Python objects: never loaded, never fallen back from."""


def _check_plain(value: Any, where: str) -> None:
    """Refuse values that weights_only loading would reject, at save time rather than at resume."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} (a key)")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(
            f"checkpoint state{where} is a {type(value).__name__}; a checkpoint holds only "
            "state dicts, tensors, numbers, strings and lists/dicts of those"
        )


def previous_path(path: Path) -> Path:
    """Where `save_checkpoint(path, ..., keep_previous=True)` keeps the one before: NAME.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], *, keep_previous: bool = False) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, os.replace.

    A crash or an exception mid-write leaves the previous checkpoint intact. With
    keep_previous, the checkpoint being replaced stays as `previous_path(path)`, the fallback
    of `load_latest` should the new one ever be unreadable.
    """
    _check_plain(state, "")
    backup = previous_path(path) if keep_previous else None
    atomic_write(Path(path), lambda f: torch.save(state, f), keep_previous=backup)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint; pickled objects are refused (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    remedy = f"delete {path} and the run will be retrained from step 0"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # Where the bytes stop decides the type: EOFError, RuntimeError (zip reader), OSError,
        # or UnpicklingError; a class or function the file asks for (a pickled object, or a
        # call such as os.system) is an UnpicklingError naming it after "GLOBAL".
        lines = str(err).splitlines()
        refused = _REFUSED_GLOBAL.search(str(err))
        if isinstance(err, pickle.UnpicklingError) and refused:
            raise UnsafeCheckpointError(
                f"checkpoint {path} holds pickled Python objects, which are never loaded "
                f"(torch.load(weights_only=True) refused {refused[1]}); casdm checkpoints "
                "hold only tensors, numbers and strings, so this file was not written by "
                f"casdm-bench: find out where it came from, then delete it (the run is then "
                "retrained from step 0)"
            ) from None
        detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        reason = f"truncated or corrupt ({detail})"
        raise CheckpointError(f"checkpoint {path} is {reason}: {remedy}", reason) from None
    if not isinstance(state, dict):
        reason = f"a {type(state).__name__}, not a dict of state"
        raise CheckpointError(f"checkpoint {path} holds {reason}: {remedy}", reason)
    return state


@dataclass
class Latest:
    """What `load_latest` found: the newest readable state (None: start afresh) and why."""

    state: dict[str, Any] | None
    path: Path | None  # the file `state` came from
    notices: list[str] = field(default_factory=list)  # what was wrong, what was done about it


def load_latest(
    path: Path, map_location: str | torch.device = "cpu", *, readonly: bool = False
) -> Latest:
    """The checkpoint at `path`, else its previous one (`previous_path`), else nothing.

    A truncated or corrupt file is never loaded: it is renamed to NAME.corrupt (kept for a
    post-mortem, out of the way of the next save) and the next candidate is tried, each step
    reported in `notices` (with readonly, unreadable files are skipped, not moved: for readers
    that are not the writer, such as ranks > 0). A file holding pickled objects is refused outright
    (UnsafeCheckpointError): someone put it there, and falling back would hide that.
    """
    path = Path(path)
    latest = Latest(None, None)
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            latest.state, latest.path = load_checkpoint(candidate, map_location), candidate
        except UnsafeCheckpointError:
            raise
        except CheckpointError as err:
            if readonly:
                continue
            aside = candidate.with_name(candidate.name + ".corrupt")
            os.replace(candidate, aside)
            latest.notices.append(f"checkpoint {candidate} is {err.reason}; moved it to {aside}")
            continue
        break
    if latest.notices:
        outcome = f"resuming from {latest.path}" if latest.path else "starting from step 0"
        latest.notices.append(outcome)
    return latest
