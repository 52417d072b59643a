"""One live broker session per identity, on this host: an exclusive lock in the key home.

The broker forces client id = certificate name (``cloud/broker.py`` B1), so two processes
connecting with one identity would take each other's session over in a loop. Whoever
connects as an identity holds its lock (``flock``: released when the process dies, so a
crash never leaves it stuck) and a second one is refused with a clear error.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import TextIO

from shared.errors import ConfigError

__all__ = ["IdentityLock"]


class IdentityLock:
    """An exclusive, non-blocking lock on ``path``.

    Args:
        path: The lock file (created; its directory too).
        busy: The error message when another holder has it.
    """

    def __init__(self, path: Path, *, busy: str) -> None:
        self._path, self._busy = path, busy
        self._handle: TextIO | None = None

    def acquire(self) -> None:
        """Take the lock (idempotent).

        Raises:
            ConfigError: it is held elsewhere (``busy``), or the file cannot be opened.
        """
        if self._handle is not None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self._path, "a")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise ConfigError(f"cannot open {self._path}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise ConfigError(self._busy) from exc
        self._handle = handle

    def release(self) -> None:
        """Let it go (closing the file releases the lock); idempotent."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
