"""Checkpoints as plain state: written atomically, read back with `torch.load(weights_only=True)`.

A checkpoint holds only state dicts, tensors (RNG states included), ints, floats, bools, strings
(the run's config as a JSON string) and lists/dicts of those: never pickled code or objects, so
loading one cannot execute anything and a file from another version fails loudly, not silently.
"""

import pickle
from pathlib import Path
from typing import Any

import torch

from casdm.errors import InputError
from casdm.files import atomic_write

_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


class CheckpointError(InputError):
    """A checkpoint file that is truncated, corrupt, not ours, or does not fit the run."""


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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, os.replace.

    A crash or an exception mid-write leaves the previous checkpoint intact and no temp file.
    """
    _check_plain(state, "")
    atomic_write(Path(path), lambda f: torch.save(state, f))


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
        # or UnpicklingError; a disallowed class is an UnpicklingError naming the global.
        lines = str(err).splitlines()
        refused = [
            line.split("Unsupported global: ", 1)[1].split(" was not", 1)[0]
            for line in lines
            if "Unsupported global: " in line
        ]
        if isinstance(err, pickle.UnpicklingError) and refused:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects, which are never loaded "
                f"(torch.load(weights_only=True) refused {refused[0]}); casdm checkpoints "
                f"hold only tensors, numbers and strings, so this file is not one: {remedy}"
            ) from None
        detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({detail}): {remedy}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict of state: {remedy}"
        )
    return state
