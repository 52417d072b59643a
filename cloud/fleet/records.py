"""What the fleet store returns: frozen records, independent of SQLAlchemy sessions.

The API serialises these (``cloud/api``), the ingestion worker writes
:class:`StatusRecord` / :class:`TelemetryRecord` batches (``cloud/ingest``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Deployment",
    "DeploymentState",
    "Device",
    "DeviceOutcome",
    "EnrollmentToken",
    "FederationRound",
    "FederationRun",
    "FederationRunState",
    "Page",
    "Role",
    "StatusRecord",
    "TelemetryAggregate",
    "TelemetryRecord",
]


class Role(StrEnum):
    """API token roles: viewers read; operators change the fleet and deployments; admins
    also manage tokens and revocation."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a cursor-paginated listing; ``next_cursor`` is None on the last page."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Device:
    """An enrolled device and its latest known state (None before it ever reported)."""

    device_id: str
    profile: str | None
    hardware_id: str
    groups: list[str]
    tags: list[str]
    broker_identity: str  # the certificate CN the broker knows it by (= device_id)
    enrolled_at: float  # Unix seconds
    revoked_at: float | None
    online: bool | None  # from the last status (the last will says offline)
    last_seen: float | None  # receive time of the last status or telemetry
    state: str | None  # DeviceState of the last status
    serving: dict[str, Any] | None  # ServingInfo of the last status, as JSON
    model_version: str | None  # serving.version (str) or the status's label


@dataclass(frozen=True)
class EnrollmentToken:
    """A one-time enrollment token (only its hash is stored)."""

    token_id: str
    device_id: str
    profile: str | None
    hardware_id: str
    groups: list[str]
    tags: list[str]
    created_at: float
    expires_at: float
    used_at: float | None


@dataclass(frozen=True)
class ApiToken:
    """A bearer token of the control API (only its hash is stored)."""

    token_id: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class StatusRecord:
    """One device status, attributed by its topic, as the ingestion worker stores it."""

    device_id: str
    msg_id: str
    received_at: float
    sent_at: float
    state: str
    payload: dict[str, Any]  # the whole StatusMessage as JSON (serving, update, floor, …)


@dataclass(frozen=True)
class TelemetryRecord:
    """One telemetry message, attributed by its topic."""

    device_id: str
    msg_id: str
    received_at: float
    sent_at: float
    model_version: str | None
    requests: int
    errors: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_count: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class TelemetryAggregate:
    """Fleet telemetry of one model version over a window."""

    model_version: str | None
    devices: int
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


class DeploymentState(StrEnum):
    """Lifecycle of a deployment job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every device committed
    FAILED = "failed"  # some device failed or timed out, or the job raised
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class DeviceOutcome:
    """One device's outcome within a deployment (``cloud.deployment.report.DeviceResult``)."""

    device_id: str
    outcome: str  # committed | failed | timeout | pending
    reason: str | None = None
    precision: str | None = None
    encoding: str | None = None
    variant: dict[str, Any] | None = None  # the variant chosen and why (§15)


@dataclass(frozen=True)
class Deployment:
    """A publish job and its per-device progress."""

    deployment_id: str
    version_ref: str
    state: DeploymentState
    created_at: float
    created_by: str  # the API token id (or "cli")
    finished_at: float | None
    error: str | None
    devices: list[DeviceOutcome] = field(default_factory=list)
    bytes_sent: int | None = None
    runner: str | None = None  # the serve process running the job (host:pid:random)
    heartbeat_at: float | None = None  # when that runner last said it is alive


@dataclass(frozen=True)
class AuditEntry:
    """Who did what, when, with which result."""

    entry_id: int
    at: float
    actor: str  # token id, or "cli"
    action: str  # e.g. "devices.revoke"
    target: str | None
    result: str  # "ok" or an error code
    detail: dict[str, Any] | None


class FederationRunState(StrEnum):
    """Lifecycle of a federated run started from the API."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"  # stop asked: the run ends after its current round
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # ended by a stop; the rounds finished until then are kept

    @property
    def final(self) -> bool:
        """Whether the run has ended."""
        return self in (
            FederationRunState.SUCCEEDED,
            FederationRunState.FAILED,
            FederationRunState.STOPPED,
        )


@dataclass(frozen=True)
class FederationRound:
    """One finished round of a federated run (``cloud.federation.plan.RoundReport``)."""

    round: int
    accuracy: float | None  # None when not finite (a diverged model)
    loss: float | None
    participants: int
    rejected: int
    failed: int
    bytes_up: int
    bytes_down: int
    seconds: float
    version: str | None  # the registry version the round produced


@dataclass(frozen=True)
class FederationRun:
    """A federated run and its finished rounds (in round order)."""

    run_id: str  # also the run id of the registry lineage (``<run>/round-<n>``)
    name: str | None  # the registry model name of the rounds, when known
    state: FederationRunState
    plan: dict[str, Any]  # what was asked (the API request), as JSON
    created_at: float
    created_by: str  # the API token id (or "cli")
    started_at: float | None
    finished_at: float | None
    error: str | None
    best_version: str | None
    rounds: list[FederationRound] = field(default_factory=list)
