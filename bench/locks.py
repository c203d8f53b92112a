"""Exclusive file locks beside local database files (SQLite is a one-machine storage anyway):
the Optuna storage's claims (bench.claims) and the opening of an SQLite MLflow store
(bench.tracking_backend)."""

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (None: no lock), held for the `with` block."""
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(database: Path | None) -> Path | None:
    """The lock file next to a local database file (None: no file, no lock)."""
    return None if database is None else database.with_name(database.name + ".lock")
