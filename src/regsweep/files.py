"""Files that several processes share: written whole or not at all, and locked while made.

Workers on one machine share the store (demo data, splits, image checks, the feature cache,
the SQLite files). A reader must never see half a file or half a folder, and a process killed
mid-write must leave nothing that looks finished: everything is written under a temporary
name in the same folder, then renamed into place, which the filesystem does atomically.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def publish_folder(staging: Path, final: Path) -> None:
    """Renames a finished folder into place; if another process won the race, keeps theirs."""
    try:
        staging.rename(final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.is_dir():
            raise


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(partial)` on a hidden sibling of `path`, then renames it over `path`.

    The partial name keeps the file's suffix (Keras insists on `.weights.h5`) and the process
    id, so two writers never share one partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{os.getpid()}-{path.name}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text))


@contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes on this machine, held for the `with` block.

    The kernel releases it if the holder dies, so a killed worker never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
