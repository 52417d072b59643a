"""Request counts and latency percentiles for telemetry, cheap enough for the hot path."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["InferenceStats", "StatsSnapshot"]


@dataclass(frozen=True)
class StatsSnapshot:
    """Counts and latency percentiles of one window (milliseconds)."""

    requests: int
    errors: int
    requests_total: int
    errors_total: int
    latency_count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class InferenceStats:
    """Thread-safe counters plus a bounded sample of latencies per window.

    Args:
        max_samples: Latencies kept per window; later ones in a busy window are counted but
            not sampled, so memory stays bounded whatever the request rate.
    """

    def __init__(self, max_samples: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._max_samples = max_samples
        self._latencies: list[float] = []
        self._requests = 0
        self._errors = 0
        self._requests_total = 0
        self._errors_total = 0

    def record_ok(self, seconds: float) -> None:
        """Count one successful request that took ``seconds``."""
        with self._lock:
            self._requests += 1
            if len(self._latencies) < self._max_samples:
                self._latencies.append(seconds)

    def record_error(self) -> None:
        """Count one failed request."""
        with self._lock:
            self._requests += 1
            self._errors += 1

    def snapshot(self, *, reset: bool = True) -> StatsSnapshot:
        """Return the current window's figures, starting a new window if ``reset``."""
        with self._lock:
            lat, req, err = self._latencies, self._requests, self._errors
            req_total = self._requests_total + req
            err_total = self._errors_total + err
            if reset:
                self._latencies, self._requests, self._errors = [], 0, 0
                self._requests_total, self._errors_total = req_total, err_total
            else:
                lat = list(lat)
        if lat:
            ms = np.asarray(lat) * 1000.0
            p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
            mx = float(ms.max())
        else:
            p50 = p95 = p99 = mx = 0.0
        return StatsSnapshot(req, err, req_total, err_total, len(lat), p50, p95, p99, mx)
