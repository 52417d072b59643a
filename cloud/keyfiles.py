"""Small file helpers for secrets: private files are created 0600, writes are atomic.

Why: a key written with the default umask (often 0644) is readable by every local user
for as long as it exists, so the mode is set at ``open`` time, not fixed afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_json", "write_private", "write_public"]


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have cleared bits; the mode must be exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a secret, readable by the owner only (0600)."""
    _write(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write a non-secret file (0644)."""
    _write(path, data, 0o644)


def write_json(path: Path, value: Any, *, private: bool = False) -> None:
    """Atomically write ``value`` as indented JSON."""
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
    (write_private if private else write_public)(path, data)


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(path.read_text())
