"""The ingestion worker's writer thread: received messages in, batches committed, then acked.

:class:`BatchWriter` runs on one thread (:meth:`BatchWriter.run`): it takes what the
worker received from its inbox, parses it (:func:`cloud.ingest.batch.parse_arrivals`; the
topic is the identity), writes batches of up to ``batch_max`` messages or ``flush_s``
seconds with the store's idempotent writes, and only then has them acknowledged, in
arrival order. A database failure is retried with backoff and nothing is acknowledged
meanwhile; once the worker is stopping, a batch that cannot be written is left
unacknowledged, so the broker redelivers it to the next session. See
:mod:`cloud.ingest.worker` for the delivery guarantee this is one half of.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

from cloud.ingest.attribution import IngestAttribution
from cloud.ingest.batch import IngestStore, _Arrival, _Batch, parse_arrivals
from cloud.observability import INFERENCE_LATENCY, INGEST_DROPPED, INGEST_LAG, INGEST_MESSAGES

__all__ = ["BatchWriter"]

# The worker's logger: what the worker logged before this module was split off, it still does.
logger = logging.getLogger("cloud.ingest.worker")

_RETRY_MIN_S, _RETRY_MAX_S = 0.5, 10.0  # backoff of a failing database write


_STOP = object()  # sentinel on the inbox: flush what came before, then end


class BatchWriter:
    """Writes what the worker received to ``store`` in batches, then has it acknowledged.

    Args:
        store: The fleet store (idempotent ``record_statuses`` / ``record_telemetry``).
        attribution: Parses and attributes the messages; its ``dropped`` counts feed the
            ``INGEST_DROPPED`` metric and :attr:`dropped`.
        acknowledge: PUBACKs the messages of a committed batch, in arrival order (the
            worker's: only it knows which connection delivered what).
        lock: The worker's state lock. It guards the counters below, so the worker's
            ``stats`` are one consistent snapshot of both threads.
        stopping: Set once the worker stops: a failing write is then given up.
        batch_max: Largest batch written in one transaction.
        flush_s: Longest a received message waits for its batch to be written.
        clock: Unix seconds: ``received_at`` of records and ingest lag.

    Attributes:
        received: Messages accepted for writing (repeats included).
        pending: Accepted, not yet committed and acknowledged.
        written: Rows the store reported as new, by kind (``status``, ``telemetry``).
        skipped: Parsed messages the store did not add.
        last_commit_at: Clock time of the last committed batch (None before the first).
        write_error: The last database error, while writes are failing.
        dropped: Messages dropped before the store, by reason (as of the last batch).
    """

    def __init__(
        self,
        store: IngestStore,
        attribution: IngestAttribution,
        *,
        acknowledge: Callable[[list[_Arrival]], None],
        lock: threading.Lock,
        stopping: threading.Event,
        batch_max: int,
        flush_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._attribution = attribution
        self._acknowledge = acknowledge
        self._state_lock = lock
        self._stopping = stopping
        self._batch_max = batch_max
        self._flush_s = flush_s
        self._clock = clock
        self._inbox: queue.Queue[_Arrival | object] = queue.Queue()
        self._reported_drops: Counter[str] = Counter()  # what the metric was told (writer)
        # The counters, under the state lock.
        self.received = 0
        self.pending = 0
        self.written: Counter[str] = Counter()
        self.skipped = 0
        self.last_commit_at: float | None = None
        self.write_error: str | None = None
        self.dropped: dict[str, int] = {}

    def accept(self, arrival: _Arrival) -> None:
        """Queue one received message for its batch (it counts as received and pending)."""
        with self._state_lock:
            self.received += 1
            self.pending += 1
        self._inbox.put(arrival)

    def finish(self) -> None:
        """Have :meth:`run` commit the batch in flight (what came before this), then end."""
        self._inbox.put(_STOP)

    def run(self) -> None:
        """The writer thread: batch, commit, acknowledge, until :meth:`finish`."""
        batch: list[_Arrival] = []
        deadline = 0.0
        while True:
            wait = max(0.0, deadline - time.monotonic()) if batch else None
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                if batch:
                    self._commit(batch, final=True)
                return
            if isinstance(item, _Arrival):
                if not batch:
                    deadline = time.monotonic() + self._flush_s
                batch.append(item)
            if batch and (len(batch) >= self._batch_max or time.monotonic() >= deadline):
                self._commit(batch, final=False)
                batch = []

    def _write(self, batch: _Batch, *, final: bool) -> tuple[int, int] | None:
        """Write the batch, retrying a failing database; None if given up (stopping)."""
        delay = _RETRY_MIN_S
        while True:
            try:
                new_status = self._store.record_statuses(batch.statuses) if batch.statuses else 0
                new_telemetry = (
                    self._store.record_telemetry(batch.telemetry) if batch.telemetry else 0
                )
                if batch.shadows:  # after its telemetry row; idempotent like it
                    self._store.record_shadow_reports(batch.shadows)
                with self._state_lock:
                    self.write_error = None
                return new_status, new_telemetry
            except Exception as exc:  # RegistryError or worse: keep the batch, do not ack
                with self._state_lock:
                    self.write_error = f"{type(exc).__name__}: {exc}"[:300]
                logger.error(
                    "ingest could not write %d messages (%s: %s); %s",
                    len(batch.arrivals),
                    type(exc).__name__,
                    exc,
                    "leaving them to the broker session"
                    if final or self._stopping.is_set()
                    else f"retrying in {delay:.1f}s",
                )
            if final or self._stopping.is_set():
                return None
            self._stopping.wait(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _commit(self, arrivals: list[_Arrival], *, final: bool) -> None:
        batch = parse_arrivals(self._attribution, arrivals)
        written = self._write(batch, final=final)
        if written is None:
            # Unacknowledged: redelivered to the next session (the store makes it harmless).
            self._report_drops()
            return
        committed_at = self._clock()
        self._acknowledge(arrivals)
        new_status, new_telemetry = written
        parsed = len(batch.statuses) + len(batch.telemetry)
        with self._state_lock:
            self.written["status"] += new_status
            self.written["telemetry"] += new_telemetry
            self.skipped += parsed - new_status - new_telemetry
            self.pending -= len(arrivals)
            self.last_commit_at = committed_at
        INGEST_MESSAGES.labels(kind="status").inc(new_status)
        INGEST_MESSAGES.labels(kind="telemetry").inc(new_telemetry)
        for arrival in arrivals:
            INGEST_LAG.observe(max(0.0, committed_at - arrival.arrived_at))
        for version, seconds in batch.latencies:
            INFERENCE_LATENCY.labels(version=version).observe(seconds)
        self._report_drops()
        logger.debug(
            "ingest committed %d messages (%d new statuses, %d new telemetry)",
            len(arrivals),
            new_status,
            new_telemetry,
        )

    def _report_drops(self) -> None:
        current = Counter(self._attribution.dropped)
        for reason, count in current.items():
            delta = count - self._reported_drops[reason]
            if delta > 0:
                INGEST_DROPPED.labels(reason=reason).inc(delta)
        self._reported_drops = current
        with self._state_lock:
            self.dropped = dict(current)
