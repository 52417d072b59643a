"""Telemetry retention: a background thread that prunes telemetry past its bound."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["DEFAULT_RETENTION_S", "PrunableStore", "RetentionJob"]

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 7 * 24 * 3600.0  # a week of telemetry
DEFAULT_INTERVAL_S = 3600.0


class PrunableStore(Protocol):
    """What the job needs of :class:`cloud.fleet.store.FleetStore`."""

    def prune_telemetry(self, *, older_than: float) -> int:
        """Delete telemetry received before ``older_than``."""


class RetentionJob:
    """Calls ``store.prune_telemetry(older_than=now - retention_s)`` every ``interval_s``
    (first at start), on a daemon thread; a failed run is logged and retried next time.

    Args:
        store: The fleet store.
        retention_s: How long telemetry is kept.
        interval_s: Seconds between runs.
        clock: Unix seconds (injectable for tests).
    """

    def __init__(
        self,
        store: PrunableStore,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_s <= 0 or interval_s <= 0:
            raise ValueError("retention_s and interval_s must be positive")
        self._store = store
        self._retention_s = retention_s
        self._interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.pruned = 0
        self.last_error: str | None = None

    def run_once(self) -> int:
        """Prune now; returns how many rows were deleted (0 after a logged failure)."""
        cutoff = self._clock() - self._retention_s
        try:
            deleted = self._store.prune_telemetry(older_than=cutoff)
        except Exception as exc:  # a database hiccup must not end the job
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("telemetry retention failed (retrying later): %s", self.last_error)
            return 0
        self.runs += 1
        self.pruned += deleted
        self.last_error = None
        if deleted:
            logger.info("pruned %d telemetry rows older than the retention bound", deleted)
        return deleted

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="fedge-retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a run in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
