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

__all__ = ["TMP_SUFFIX", "fsync_dir", "remove_temporaries", "remove_tree", "write_atomic"]

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename is durable only after this)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (rule F1), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


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
