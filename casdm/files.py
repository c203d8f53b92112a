"""Atomic file writes: a reader (or a crash) never sees a partially written file."""

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from casdm import faults

_TEMP_PREFIX = "."  # temp files are hidden: `.NAME.<random>.tmp` beside NAME


def atomic_write(
    path: Path, write: Callable[[BinaryIO], None], *, keep_previous: Path | None = None
) -> None:
    """Call `write(f)` on a hidden temp file beside `path`, fsync it, then rename it over `path`.

    The rename is atomic on POSIX file systems, so `path` holds either its old content or the
    complete new content; the temporary file is removed if `write` fails. With `keep_previous`,
    the old `path` is first renamed to it, so a crash between the two renames leaves no `path`
    but a complete `keep_previous` (readers fall back to it, see casdm.checkpoint).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            faults.inject(f"write:{path.name}")
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files a killed `atomic_write(path, ...)` left beside `path`; their paths.

    Only for a folder this process owns (a claimed trial's), where no other writer is active.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f"{_TEMP_PREFIX}{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); Windows cannot open a folder and needs no fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
