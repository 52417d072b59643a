"""Crash-safe file primitives for the updater (rule F1: write tmp, fsync, rename, fsync dir).

A reader after a power cut or SIGKILL sees either the old file or the complete new one,
never a torn file: data is written to a hidden temporary name, flushed to disk, then
atomically renamed over the target, and the directory is flushed so the rename itself is
durable. Leftover temporaries (``.<name>.tmp``) are removed by :func:`remove_temporaries`
on start-up.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

__all__ = [
    "TMP_SUFFIX",
    "fsync_dir",
    "remove_temporaries",
    "remove_tree",
    "temporary_of",
    "write_atomic",
    "write_verified_cache",
]

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def temporary_of(path: Path) -> Path:
    """The temporary :func:`write_atomic` writes ``path``'s new bytes to (``.<name>.tmp``)."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename is durable only after this)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, *, flush: bool) -> None:
    """Create/truncate ``path`` (mode 0600) and write all of ``data``; fsync if ``flush``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if flush:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (rule F1), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_of(path)
    _write_file(tmp, data, flush=True)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_verified_cache(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) with no temporary, rename or fsync.

    Only for data that is re-verified against signed hashes whenever it is read back
    (download chunks and the manifest, rule D1): after a crash or power cut such a file
    may be missing, empty or torn, and the reader then drops it and fetches it again, so
    the three extra system calls and two flushes per 64 KiB chunk that durability costs
    buy nothing. Slots and state always go through :func:`write_atomic`.
    """
    _write_file(path, data, flush=False)


def remove_temporaries(directory: Path) -> int:
    """Delete half-written ``.*.tmp`` files left by a crash under ``directory``."""
    if not directory.is_dir():
        return 0
    removed = 0
    for tmp in directory.rglob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("removed %d half-written temporary file(s) under %s", removed, directory)
    return removed


def remove_tree(directory: Path) -> None:
    """Delete ``directory`` and everything in it (missing is fine), durably."""
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        if directory.parent.exists():
            fsync_dir(directory.parent)
