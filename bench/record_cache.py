"""A study's records, read from a local Optuna storage file, kept beside it while it is unchanged.

Reading a study through Optuna costs most of a second before the first row (Optuna, SQLAlchemy and
alembic are imported, the schema is checked), and `bench table` and `bench show` read the same
finished study again and again. So the records read from a local storage file (SQLite or an
Optuna journal) are kept as JSON in `<storage file>.records/<study>.json` with the file's stamp
(size and modification time, of SQLite's -wal and -journal files too): a read whose stamp matches
uses them and never imports Optuna. Any write to the storage (a trial told, a heartbeat) changes
the stamp, and the next read goes through Optuna again.

As git does with its index, a snapshot is only written when it cannot hide a write: the stamp
must be the same before and after the read through Optuna, and the storage's last write at least
RACY_S old, since a write within the file system's timestamp granularity could leave the stamp
unchanged. A database server is always read through Optuna.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casdm.files import atomic_write_text

FORMAT = 1  # bumped whenever the records' fields change: older snapshots are ignored
RACY_S = 2.0
SIDE_FILES = ("", "-wal", "-journal")  # SQLite's write-ahead log and rollback journal


def stamp(path: Path) -> list[list[Any]] | None:
    """[name suffix, size, mtime in ns] of the storage file and its side files; None if missing."""
    found = []
    for suffix in SIDE_FILES:
        try:
            stat = Path(f"{path}{suffix}").stat()
        except FileNotFoundError:
            if not suffix:
                return None
            continue
        found.append([suffix, stat.st_size, stat.st_mtime_ns])
    return found


def snapshot_path(path: Path, study: str) -> Path:
    """Where the records of `study` read from the storage file `path` are kept."""
    return path.with_name(path.name + ".records") / f"{study}.json"


def cached(
    path: Path | None, study: str, key: Any, read: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """`read()` (the study's records as JSON-able data), or its snapshot when `path` (the local
    storage file; None for a database server) is unchanged since it was taken. `key` is any
    other JSON-able value the records depend on: a snapshot under another key is not used."""
    if path is None:
        return read()
    before = stamp(path)
    snapshot = snapshot_path(path, study)
    if before is not None:
        try:
            kept = json.loads(snapshot.read_text())
        except (OSError, ValueError):
            kept = None
        if isinstance(kept, dict) and kept.get("check") == [FORMAT, before, key]:
            return kept["records"]
    records = read()
    after = stamp(path)
    if after is not None and after == before and time.time() - _last_write(after) >= RACY_S:
        try:
            check = [FORMAT, after, key]
            atomic_write_text(snapshot, json.dumps({"check": check, "records": records}))
        except OSError:
            pass  # a read-only results folder: no snapshot, every read goes through Optuna
    return records


def _last_write(found: list[list[Any]]) -> float:
    """Seconds since the epoch of the newest modification in a stamp."""
    return max(mtime for _, _, mtime in found) / 1e9
