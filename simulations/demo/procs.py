"""The demo's processes: each in its own session (process group), all stopped on any exit.

Every child is started with ``start_new_session=True``, so a signal to its group reaches its
own children too (an agent's SuperNode, the coordinator's SuperLink and ServerApp). The
:class:`ProcessGroup` stops them in reverse start order — SIGTERM to the group, a grace
period, then SIGKILL — from ``close()``, from ``atexit``, and from SIGINT/SIGTERM handlers,
so Ctrl-C at any point leaves no orphan. ``descendants()`` lets a test check that.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import psutil

__all__ = ["ProcessGroup", "Started"]

log = logging.getLogger(__name__)


@dataclass
class Started:
    """One child: its name, process and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class ProcessGroup:
    """Children of the demo; :meth:`close` (also run at exit) stops every one of them."""

    def __init__(self, log_dir: Path, env: dict[str, str], cwd: Path) -> None:
        self.log_dir, self.env, self.cwd = log_dir, env, cwd
        self.children: list[Started] = []
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Started:
        """Start ``argv`` in a new session with its output in ``<log_dir>/<name>.log``."""
        path = self.log_dir / f"{name}.log"
        log_file = path.open("ab")
        with self._lock:
            if self._closed:
                log_file.close()
                raise RuntimeError("the demo is stopping")
            proc = subprocess.Popen(
                argv,
                env=env or self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            child = Started(name, proc, path, log_file)
            self.children.append(child)
        return child

    def close(self, grace_s: float = 10.0) -> None:
        """SIGTERM each child's group (newest first), wait, SIGKILL what is left."""
        with self._lock:
            self._closed = True
            children, self.children = list(reversed(self.children)), []
        # grandchildren in sessions of their own (a SuperLink, a ServerApp) are not in the
        # child's group: remember them now, kill any that outlive their parent
        below: list[psutil.Process] = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                below += psutil.Process(child.proc.pid).children(recursive=True)
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        for child in children:
            try:
                child.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: killing it", child.name, grace_s)
            # the group may hold grandchildren that outlived their parent: kill them too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)
            child.log_file.close()
        for proc in below:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()

    @staticmethod
    def descendants() -> list[psutil.Process]:
        """Every live process below this one (what an orphan check looks at)."""
        try:
            kids = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in kids if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def interrupt_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt like Ctrl-C: one clean-up path."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
