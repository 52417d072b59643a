"""What the ingestion worker batches: received messages, their records, and its stats.

:func:`parse_arrivals` turns the messages of a batch into the
:class:`cloud.fleet.records.StatusRecord` / :class:`cloud.fleet.records.TelemetryRecord`
rows the worker's writer thread (:class:`cloud.ingest.writer.BatchWriter`) commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud.deployment.evidence import DeviceStatus
from cloud.deployment.link import Incoming
from cloud.fleet.records import StatusRecord, TelemetryRecord
from cloud.ingest.attribution import DeviceTelemetry, IngestAttribution
from cloud.rollout.records import ShadowRecord
from shared.protocol.messages import TelemetryMessage

__all__ = ["IngestStats", "IngestStore", "parse_arrivals", "shadow_record"]

# The worker's logger: what the worker logged before this module was split off, it still does.
logger = logging.getLogger("cloud.ingest.worker")


class IngestStore(Protocol):
    """What the worker needs of :class:`cloud.fleet.store.FleetStore`."""

    def record_statuses(self, batch: list[StatusRecord]) -> int:
        """Store statuses idempotently; how many were new."""

    def record_telemetry(self, batch: list[TelemetryRecord]) -> int:
        """Store telemetry idempotently; how many were new."""

    def record_shadow_reports(self, batch: list[ShadowRecord]) -> int:
        """Store shadow reports idempotently; how many were new."""


@dataclass(frozen=True)
class IngestStats:
    """A snapshot of the worker (for ``/readyz`` and logs).

    Attributes:
        received: Messages handed over by the broker (repeats included).
        written: Rows the store reported as new, by kind (``status``, ``telemetry``).
        skipped: Parsed messages the store did not add (a repeat after a redelivery, or a
            device unknown to the store).
        dropped: Messages dropped before the store, by reason.
        pending: Received, not yet committed and acknowledged.
        last_commit_at: Clock time of the last committed batch (None before the first).
        connected: Whether the broker connection is up.
        subscribed: Whether the broker granted the subscriptions (on the last connect).
        failure: Why the worker cannot work (refused connection or subscription), if so.
        write_error: The last database error, while writes are failing (None once a
            batch commits again).
    """

    received: int
    written: dict[str, int]
    skipped: int
    dropped: dict[str, int]
    pending: int
    last_commit_at: float | None
    connected: bool
    subscribed: bool
    failure: str | None
    write_error: str | None = None

    @property
    def written_total(self) -> int:
        """Rows written, all kinds."""
        return sum(self.written.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "received": self.received,
            "written": dict(self.written),
            "skipped": self.skipped,
            "dropped": dict(self.dropped),
            "pending": self.pending,
            "last_commit_at": self.last_commit_at,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "failure": self.failure,
            "write_error": self.write_error,
        }


@dataclass(frozen=True)
class _Arrival:
    """One received message, with what is needed to acknowledge it later."""

    message: Incoming
    mid: int
    qos: int
    generation: int  # which connection delivered it: acks go only to that one
    arrived_at: float


@dataclass
class _Batch:
    arrivals: list[_Arrival] = field(default_factory=list)
    statuses: list[StatusRecord] = field(default_factory=list)
    telemetry: list[TelemetryRecord] = field(default_factory=list)
    shadows: list[ShadowRecord] = field(default_factory=list)
    latencies: list[tuple[str, float]] = field(default_factory=list)  # (version, seconds)


def parse_arrivals(attribution: IngestAttribution, arrivals: list[_Arrival]) -> _Batch:
    """Convert received messages to the store's records (what cannot be parsed is counted
    in ``attribution.dropped``)."""
    out = _Batch(arrivals)
    for arrival in arrivals:
        try:
            parsed = attribution.classify(arrival.message)
        except Exception:  # never expected: Attribution drops what it cannot parse
            logger.exception("ingest could not parse a message on %s", arrival.message.topic)
            attribution.dropped["malformed"] += 1
            continue
        if isinstance(parsed, DeviceStatus):
            s = parsed.status
            out.statuses.append(
                StatusRecord(
                    device_id=parsed.device_id,
                    msg_id=s.msg_id,
                    received_at=arrival.arrived_at,
                    sent_at=s.sent_at,
                    state=s.state.value,
                    payload=s.model_dump(mode="json"),
                )
            )
        elif isinstance(parsed, DeviceTelemetry):
            t = parsed.telemetry
            out.telemetry.append(
                TelemetryRecord(
                    device_id=parsed.device_id,
                    msg_id=t.msg_id,
                    received_at=arrival.arrived_at,
                    sent_at=t.sent_at,
                    model_version=t.model_version,
                    requests=t.requests,
                    errors=t.errors,
                    latency_p50_ms=t.latency.p50_ms,
                    latency_p95_ms=t.latency.p95_ms,
                    latency_p99_ms=t.latency.p99_ms,
                    latency_count=t.latency.count,
                    payload=t.model_dump(mode="json"),
                )
            )
            if t.shadow is not None:  # the rollout's shadow gate reads these rows
                out.shadows.append(shadow_record(parsed.device_id, t, arrival.arrived_at))
            if t.latency.count:
                out.latencies.append((t.model_version or "none", t.latency.p50_ms / 1000))
    return out


def shadow_record(device_id: str, t: TelemetryMessage, received_at: float) -> ShadowRecord:
    """The shadow report of telemetry ``t`` (which must carry one) as a store row; the
    device is the one the topic named, never the payload."""
    shadow = t.shadow
    assert shadow is not None
    return ShadowRecord(
        device_id=device_id,
        msg_id=t.msg_id,
        received_at=received_at,
        sent_at=t.sent_at,
        model_id=shadow.candidate.model_id,
        version=shadow.candidate.version,
        sha256=shadow.candidate.sha256,
        serving_version=shadow.serving_version,
        task=shadow.task,
        samples=shadow.samples,
        agreement=shadow.agreement,
        mean_abs_diff=shadow.mean_abs_diff,
        candidate_p95_ms=shadow.candidate_latency.p95_ms,
        serving_p95_ms=shadow.serving_latency.p95_ms,
        errors=shadow.errors,
        timeouts=shadow.timeouts,
        dropped=shadow.dropped,
    )
