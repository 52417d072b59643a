"""The ingestion worker: device status and telemetry from the broker into the fleet database.

Delivery guarantee (at-least-once from broker to database, exactly-once rows):

- A persistent MQTT 5 session of its own identity, ``fedge-ingest`` (``clean_start=False``
  from the first connect, as :mod:`cloud.deployment.link` explains for Mosquitto 2.0, and a
  session expiry of an hour): while the worker is down, restarting or reconnecting, the
  broker queues what devices send for it.
- **Manual acknowledgements**: paho's ``manual_ack=True``; a QoS 1 message is PUBACKed only
  after the batch holding it is committed to the database. A worker killed between receipt
  and commit never acknowledged it, so the broker redelivers it to the next session.
- Redelivery makes repeats: the store's writes are idempotent by ``(device_id, msg_id)``
  (:meth:`cloud.fleet.store.FleetStore.record_statuses`), so a repeat is a no-op.

Threads: paho's network thread only enqueues (its callbacks never raise); one writer thread
(:class:`cloud.ingest.writer.BatchWriter`) parses
(:class:`cloud.ingest.attribution.IngestAttribution`: the topic is the identity), writes
batches of up to ``batch_max`` messages or ``flush_s`` seconds, then acknowledges them in
arrival order. A database failure is retried (with backoff) and nothing is acknowledged
meanwhile. :meth:`IngestWorker.stop` commits and acknowledges the batch in flight and
disconnects *without* ending the session.

This module holds the connection side: the paho callbacks, the worker's lifecycle, which
connection may acknowledge what, and the stats of both threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cloud.deployment.link import Incoming
from cloud.identity_lock import IdentityLock
from cloud.ingest.attribution import IngestAttribution
from cloud.ingest.batch import IngestStats, IngestStore, _Arrival
from cloud.ingest.session import (
    SESSION_EXPIRY_S,
    SUBSCRIPTIONS,
    connect_properties,
    ingest_client,
)
from cloud.ingest.writer import BatchWriter
from cloud.keys import KeyHome
from cloud.observability import INGEST_DROPPED
from shared.errors import ConfigError

__all__ = ["SESSION_EXPIRY_S", "SUBSCRIPTIONS", "IngestStats", "IngestStore", "IngestWorker"]

logger = logging.getLogger(__name__)


class IngestWorker:
    """Subscribes as ``fedge-ingest`` and writes device status and telemetry to ``store``.

    Args:
        home: Key home holding ``ingest/broker.{crt,key}`` (``KeyHome.ensure_ingest``) and
            the CA.
        host, port: The broker's TLS listener.
        store: The fleet store (idempotent ``record_statuses`` / ``record_telemetry``).
        batch_max: Largest batch written in one transaction.
        flush_s: Longest a received message waits for its batch to be written.
        clock: Unix seconds: ``received_at`` of records and ingest lag.
        session_expiry_s: How long the broker keeps the session while the worker is away.

    Raises:
        ConfigError: the ingest certificate is missing or unreadable, or invalid sizes.
    """

    def __init__(
        self,
        home: KeyHome,
        host: str,
        port: int,
        store: IngestStore,
        *,
        batch_max: int = 500,
        flush_s: float = 0.2,
        clock: Callable[[], float] = time.time,
        session_expiry_s: int = SESSION_EXPIRY_S,
    ) -> None:
        if batch_max < 1 or flush_s <= 0:
            raise ConfigError("batch_max must be >= 1 and flush_s > 0")
        self._batch_max = batch_max
        self._flush_s = flush_s
        self._clock = clock
        self._host, self._port = host, port
        self._session_expiry_s = session_expiry_s
        # One worker per key home: a second one would take the session over (flapping).
        self._lock = IdentityLock(
            home.ingest_dir / "broker.lock",
            busy="another ingest worker is running for this key home (the broker allows one "
            "fedge-ingest session): stop it first",
        )
        self._accepting = False
        self._accept_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._subscribed = threading.Event()
        self._failure: str | None = None
        self._undecodable = 0
        self._stopping = threading.Event()
        # The writer side (batches, database, its counters), under the same state lock.
        self._batches = BatchWriter(
            store,
            IngestAttribution(),
            acknowledge=self._acknowledge,
            lock=self._state_lock,
            stopping=self._stopping,
            batch_max=batch_max,
            flush_s=flush_s,
            clock=clock,
        )
        self._writer: threading.Thread | None = None
        self._started = False
        client = ingest_client(home)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client

    # --- paho callbacks (network thread): record and enqueue, never raise ---------------
    def _on_connect(self, client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        try:
            if getattr(reason, "is_failure", False):
                self._failure = f"broker refused the ingest connection: {reason}"
                logger.error("%s", self._failure)
                return
            with self._state_lock:
                self._generation += 1
                self._connected = True
            resumed = bool(getattr(flags, "session_present", False))
            logger.info(
                "ingest connected to %s:%d (%s session)",
                self._host,
                self._port,
                "resumed" if resumed else "new",
            )
            # Also on a resumed session (harmless: retained statuses come again and are
            # repeats by msg_id), so a subscription refused or lost earlier is retried.
            self._subscribed.clear()
            client.subscribe([(t, 1) for t in SUBSCRIPTIONS])
        except Exception:  # a callback that raises would stop paho's network loop
            logger.exception("ingest on_connect failed")

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, codes: Any, _p: Any) -> None:
        try:
            refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
            if refused:
                self._failure = (
                    f"broker refused the ingest subscriptions ({', '.join(refused)}): "
                    "regenerate the broker ACL with `fedge broker config`"
                )
                logger.error("%s", self._failure)
                return
            self._failure = None
            self._subscribed.set()
        except Exception:
            logger.exception("ingest on_subscribe failed")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        try:
            with self._state_lock:
                self._connected = False
            self._subscribed.clear()
            if not self._stopping.is_set():
                logger.warning(
                    "ingest lost the broker (%s); reconnecting to the same session", reason
                )
        except Exception:
            logger.exception("ingest on_disconnect failed")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            arrival = _Arrival(
                Incoming(str(msg.topic), bytes(msg.payload), bool(msg.retain)),
                int(msg.mid),
                int(msg.qos),
                self._generation,
                self._clock(),
            )
        except Exception:  # e.g. a topic that is not UTF-8: unusable, acknowledge it
            logger.warning("ingest dropped an undecodable message")
            INGEST_DROPPED.labels(reason="bad_topic").inc()
            with self._state_lock:
                self._undecodable += 1
            try:
                if msg.qos:
                    self._client.ack(msg.mid, msg.qos)
            except Exception:
                logger.exception("ingest could not acknowledge an undecodable message")
            return
        with self._accept_lock:
            if not self._accepting:
                # Stopping: left unacknowledged, the broker redelivers it to the next session.
                return
            self._batches.accept(arrival)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Connect (in the background: paho retries until the broker answers) and start
        the writer thread.

        Raises:
            ConfigError: another ingest worker holds this key home's session, the broker
                address cannot be used, or this worker was stopped (build a new one).
        """
        if self._started:
            return
        if self._stopping.is_set():
            raise ConfigError("a stopped ingest worker cannot be restarted: build a new one")
        self._acquire()
        props = connect_properties(self._session_expiry_s, self._batch_max)
        self._accepting = True
        self._writer = threading.Thread(
            target=self._batches.run, name="fedge-ingest-writer", daemon=True
        )
        self._writer.start()
        try:
            self._client.connect_async(
                self._host, self._port, keepalive=30, clean_start=False, properties=props
            )
        except (OSError, ValueError) as exc:
            self._abort_start()
            raise ConfigError(f"cannot use broker {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        self._started = True
        logger.info(
            "ingest worker started for %s:%d (batch %d, flush %.2fs)",
            self._host,
            self._port,
            self._batch_max,
            self._flush_s,
        )

    def _abort_start(self) -> None:
        self._stopping.set()
        with self._accept_lock:
            self._accepting = False
            self._batches.finish()
        if self._writer is not None:
            self._writer.join(5)
        self._release()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until connected and subscribed; False after ``timeout``."""
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Commit and acknowledge the batch in flight, then disconnect keeping the session.

        What arrives after this is called stays unacknowledged (the broker redelivers it
        to the next session); the session is not ended, so what devices send while the
        worker is down is queued for its successor.
        """
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        with self._accept_lock:
            self._accepting = False
            self._batches.finish()
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                logger.error("ingest writer did not finish within %.0fs", timeout)
        # A normal DISCONNECT with no session expiry property: the CONNECT's expiry stands.
        # paho sends it after the PUBACKs already queued.
        self._client.disconnect()
        self._client.loop_stop()
        self._release()
        stats = self.stats
        logger.info(
            "ingest worker stopped: %d received, %d written, %d dropped, %d left to the session",
            stats.received,
            stats.written_total,
            sum(stats.dropped.values()),
            stats.pending,
        )

    def _acquire(self) -> None:
        self._lock.acquire()

    def _release(self) -> None:
        self._lock.release()

    @property
    def stats(self) -> IngestStats:
        """A consistent snapshot of the counters."""
        batches = self._batches
        with self._state_lock:
            dropped = Counter(batches.dropped)
            if self._undecodable:
                dropped["bad_topic"] += self._undecodable
            return IngestStats(
                received=batches.received,
                written=dict(batches.written),
                skipped=batches.skipped,
                dropped=dict(dropped),
                pending=batches.pending,
                last_commit_at=batches.last_commit_at,
                connected=self._connected,
                subscribed=self._subscribed.is_set(),
                failure=self._failure,
                write_error=batches.write_error,
            )

    # --- acknowledgements (called by the writer thread) ------------------------------
    def _acknowledge(self, arrivals: list[_Arrival]) -> None:
        """PUBACK, in arrival order, what the current connection delivered.

        A message delivered by an earlier connection is not acknowledged: the broker
        redelivers it on the resumed session (as a repeat the store skips), and that copy
        is acknowledged after its own batch.
        """
        with self._state_lock:
            generation, connected = self._generation, self._connected
        for arrival in arrivals:
            if arrival.qos == 0 or not connected or arrival.generation != generation:
                continue
            try:
                self._client.ack(arrival.mid, arrival.qos)
            except Exception:  # the connection just dropped: redelivered, then skipped
                logger.warning("ingest could not acknowledge mid %d", arrival.mid)
