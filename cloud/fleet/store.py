"""The fleet's state in the registry database (SQLAlchemy; SQLite by default, PostgreSQL by URL).

Devices, one-time enrollment tokens, API tokens, device status (latest and history),
telemetry (a time series with a retention bound), deployments with per-device outcomes and
the audit log. Key material never enters the database: private keys stay in the key home
(0600); the database holds public facts and hashes only (tokens are stored as SHA-256 of a
256-bit random secret: a fast hash is enough for a secret that cannot be guessed).

Every method is one transaction and is safe to call from several threads (a session per
call). Writes of device messages are idempotent by ``(device_id, msg_id)``: an MQTT QoS 1
repeat is stored once.

INTERFACE CONTRACT (the API, the ingestion worker and the service code against it).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.engine import Engine

from cloud.fleet.records import (
    ApiToken,
    AuditEntry,
    Deployment,
    DeploymentState,
    Device,
    DeviceOutcome,
    EnrollmentToken,
    Page,
    Role,
    StatusRecord,
    TelemetryAggregate,
    TelemetryRecord,
)

__all__ = ["FleetStore"]


class FleetStore:
    """Fleet state on one database engine (shared with the model registry).

    Raises (every method): ``RegistryError`` for a database failure, ``NotFoundError`` for
    an unknown id, ``ConfigError`` (or a subclass) for invalid input, with a clear message.
    """

    def __init__(self, engine: Engine) -> None:
        raise NotImplementedError

    # --- devices ------------------------------------------------------------------------
    def add_device(
        self,
        device_id: str,
        *,
        hardware_id: str,
        profile: str | None,
        groups: Iterable[str] = (),
        tags: Iterable[str] = (),
        enrolled_at: float,
    ) -> Device:
        """Record an enrolled device (``ConfigError`` code ``already_enrolled`` if present)."""
        raise NotImplementedError

    def get_device(self, device_id: str) -> Device:
        """One device with its latest state (``NotFoundError``)."""
        raise NotImplementedError

    def list_devices(
        self,
        *,
        group: str | None = None,
        tag: str | None = None,
        profile: str | None = None,
        online: bool | None = None,
        model_version: str | None = None,
        revoked: bool | None = False,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Device]:
        """Devices ordered by id, after ``cursor`` (the last id of the previous page)."""
        raise NotImplementedError

    def set_labels(
        self, device_id: str, *, groups: Iterable[str] | None, tags: Iterable[str] | None
    ) -> Device:
        """Replace a device's groups and/or tags (None: leave as is)."""
        raise NotImplementedError

    def mark_revoked(self, device_id: str, *, at: float) -> Device:
        """Mark revoked (idempotent)."""
        raise NotImplementedError

    # --- enrollment tokens ----------------------------------------------------------------
    def create_enrollment_token(
        self,
        device_id: str,
        *,
        hardware_id: str,
        profile: str | None,
        groups: Iterable[str] = (),
        tags: Iterable[str] = (),
        ttl_s: float,
        now: float,
    ) -> tuple[str, EnrollmentToken]:
        """A new one-time token for ``device_id``; returns (the secret, shown once; record)."""
        raise NotImplementedError

    def redeem_enrollment_token(self, secret: str, *, now: float) -> EnrollmentToken:
        """Mark the token used, atomically (two redeemers: one wins).

        Raises:
            InvalidTokenError (a ``SecurityError``; codes ``invalid_token`` — unknown,
            ``token_used``, ``token_expired``).
        """
        raise NotImplementedError

    # --- API tokens -----------------------------------------------------------------------
    def create_api_token(self, role: Role, *, name: str, now: float) -> tuple[str, ApiToken]:
        """A new bearer token; returns (the secret, shown once; record)."""
        raise NotImplementedError

    def authenticate(self, secret: str) -> ApiToken | None:
        """The unrevoked token whose secret this is, or None (constant-time compare)."""
        raise NotImplementedError

    def list_api_tokens(self) -> list[ApiToken]:
        """Every token (no secrets)."""
        raise NotImplementedError

    def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken:
        """Revoke a token (idempotent; ``NotFoundError``)."""
        raise NotImplementedError

    # --- device status and telemetry ------------------------------------------------------
    def record_statuses(self, batch: list[StatusRecord]) -> int:
        """Store statuses (history) and update each device's latest state; returns how many
        were new. Repeats (same device and msg_id) are skipped; statuses of unknown devices
        are skipped and counted by the caller via the return value."""
        raise NotImplementedError

    def record_telemetry(self, batch: list[TelemetryRecord]) -> int:
        """Store telemetry (repeats skipped, unknown devices skipped); returns how many new."""
        raise NotImplementedError

    def status_history(self, device_id: str, *, limit: int = 50) -> list[StatusRecord]:
        """The device's newest statuses first."""
        raise NotImplementedError

    def latest_telemetry(self, device_id: str) -> TelemetryRecord | None:
        """The device's newest telemetry."""
        raise NotImplementedError

    def telemetry_aggregates(
        self, *, since: float, model_version: str | None = None
    ) -> list[TelemetryAggregate]:
        """Per model version over ``received_at >= since``: devices, request and error
        counts, error rate, and request-weighted p50/p95/p99 of the windows' percentiles."""
        raise NotImplementedError

    def prune_telemetry(self, *, older_than: float) -> int:
        """Delete telemetry received before ``older_than`` (the retention bound)."""
        raise NotImplementedError

    # --- deployments ----------------------------------------------------------------------
    def create_deployment(
        self, version_ref: str, device_ids: list[str], *, created_by: str, now: float
    ) -> Deployment:
        """A ``pending`` deployment with one ``pending`` outcome per device."""
        raise NotImplementedError

    def update_deployment(
        self,
        deployment_id: str,
        *,
        state: DeploymentState | None = None,
        outcomes: list[DeviceOutcome] | None = None,
        finished_at: float | None = None,
        error: str | None = None,
        bytes_sent: int | None = None,
    ) -> Deployment:
        """Progress of a deployment (outcomes replace those of the same devices)."""
        raise NotImplementedError

    def get_deployment(self, deployment_id: str) -> Deployment:
        """One deployment with its per-device outcomes."""
        raise NotImplementedError

    def list_deployments(self, *, cursor: str | None = None, limit: int = 50) -> Page[Deployment]:
        """Newest first."""
        raise NotImplementedError

    # --- audit ----------------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str,
        action: str,
        target: str | None,
        result: str,
        at: float,
        detail: dict[str, object] | None = None,
    ) -> None:
        """Append to the audit log."""
        raise NotImplementedError

    def list_audit(self, *, cursor: str | None = None, limit: int = 100) -> Page[AuditEntry]:
        """Newest first."""
        raise NotImplementedError
