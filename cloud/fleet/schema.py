"""SQLAlchemy tables of the fleet, on the registry's declarative ``Base`` (one metadata, one
database). Portable across SQLite and PostgreSQL: times are Unix seconds as ``Float``,
structured values are ``JSON``.

``devices.groups`` / ``devices.tags`` hold the labels as JSON lists (what the API returns);
``device_labels`` holds the same labels one row each, indexed by ``(kind, value)``, so that
``list_devices(group=..., tag=...)`` is an indexed ``EXISTS`` on both backends (no
backend-specific JSON operators). :class:`cloud.fleet.store.FleetStore` writes both in the
same transaction.

Changing a table here needs a new migration in ``cloud/migrations/versions``;
``tests/cloud/test_migrations.py`` fails while head and this metadata differ.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.registry.schema import Base

__all__ = [
    "ApiTokenRow",
    "AuditRow",
    "DeploymentDeviceRow",
    "DeploymentRow",
    "DeviceLabelRow",
    "DeviceRow",
    "DeviceStatusRow",
    "EnrollmentTokenRow",
    "FederationRoundRow",
    "FederationRunRow",
    "TelemetryRow",
    "VariantMeasurementRow",
]

ID = 64  # shared.identifiers.MAX_IDENTIFIER_LENGTH
#: JSON where Python ``None`` is SQL NULL (not the JSON text ``null``).
NullableJSON = JSON(none_as_null=True)


class DeviceRow(Base):
    """An enrolled device, its enrollment record and its latest known state.

    The enrollment record (``cloud.device_records.DeviceRecord``: what the broker ACL/CRL,
    the publisher and the federation read) is ``hardware_id``, ``groups``, ``enrolled_at``,
    ``revoked_at`` (revoked = not NULL) and the credential columns: public keys, the broker
    password's hash, the TLS certificate serial — never a private key. They are NULL for a
    row without a record (``FleetStore.add_device`` alone); ``box_public`` tells.
    """

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    profile: Mapped[str | None] = mapped_column(String(200), nullable=True)
    hardware_id: Mapped[str] = mapped_column(String(ID))
    groups: Mapped[list[str]] = mapped_column(JSON)
    tags: Mapped[list[str]] = mapped_column(JSON)
    broker_identity: Mapped[str] = mapped_column(String(ID))
    enrolled_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    online: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str | None] = mapped_column(String(40), nullable=True)
    serving: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_status_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # -- the enrollment record's credentials (public; 0004) --------------------------------
    box_public: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signing_public: Mapped[str | None] = mapped_column(String(64), nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(400), nullable=True)
    tls_serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    supernode_public: Mapped[str | None] = mapped_column(String(1000), nullable=True)


class DeviceLabelRow(Base):
    """One group or tag of a device (``kind`` is ``group`` or ``tag``), for indexed filters."""

    __tablename__ = "device_labels"
    __table_args__ = (Index("ix_device_labels_kind_value", "kind", "value"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    value: Mapped[str] = mapped_column(String(ID), primary_key=True)


class DeviceStatusRow(Base):
    """Status history: every distinct status message a device sent."""

    __tablename__ = "device_status"
    __table_args__ = (
        UniqueConstraint("device_id", "msg_id", name="uq_device_status_device_msg"),
        Index("ix_device_status_device_received", "device_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    msg_id: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class TelemetryRow(Base):
    """One telemetry window of a device (pruned past the retention bound)."""

    __tablename__ = "telemetry"
    __table_args__ = (
        UniqueConstraint("device_id", "msg_id", name="uq_telemetry_device_msg"),
        Index("ix_telemetry_received", "received_at"),
        Index("ix_telemetry_version_received", "model_version", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    msg_id: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(200), nullable=True)
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    latency_p50_ms: Mapped[float] = mapped_column(Float)
    latency_p95_ms: Mapped[float] = mapped_column(Float)
    latency_p99_ms: Mapped[float] = mapped_column(Float)
    latency_count: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class EnrollmentTokenRow(Base):
    """A one-time enrollment token: the SHA-256 of its secret, never the secret."""

    __tablename__ = "enrollment_tokens"

    token_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(ID))
    profile: Mapped[str | None] = mapped_column(String(200), nullable=True)
    hardware_id: Mapped[str] = mapped_column(String(ID))
    groups: Mapped[list[str]] = mapped_column(JSON)
    tags: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiTokenRow(Base):
    """A bearer token of the control API: the SHA-256 of its secret, never the secret."""

    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeploymentRow(Base):
    """A publish job."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_created", "created_at", "deployment_id"),)

    deployment_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    version_ref: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(200))
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    bytes_sent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Who runs the job and when it last said so (0007): crash recovery fails an open
    # deployment only once its runner's heartbeat is stale (cloud.fleet.sync).
    runner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeploymentDeviceRow(Base):
    """One device's outcome within a deployment."""

    __tablename__ = "deployment_devices"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.deployment_id"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    precision: Mapped[str | None] = mapped_column(String(20), nullable=True)
    encoding: Mapped[str | None] = mapped_column(String(20), nullable=True)
    # The variant chosen for the device and why (docs/protocol.md §15; 0005).
    variant: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)


class AuditRow(Base):
    """The append-only audit log."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)
    result: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)


class FederationRunRow(Base):
    """A federated run started from the control API (``plan`` is its request, as JSON)."""

    __tablename__ = "federation_runs"
    __table_args__ = (Index("ix_federation_runs_created", "created_at", "run_id"),)

    run_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    state: Mapped[str] = mapped_column(String(20))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    best_version: Mapped[str | None] = mapped_column(String(200), nullable=True)


class FederationRoundRow(Base):
    """One finished round of a federated run (its ``RoundReport``)."""

    __tablename__ = "federation_rounds"

    run_id: Mapped[str] = mapped_column(ForeignKey("federation_runs.run_id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: NULL when not finite (a diverged model: SQLite cannot store NaN).
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    participants: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    bytes_up: Mapped[int] = mapped_column(BigInteger)
    bytes_down: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    version: Mapped[str | None] = mapped_column(String(200), nullable=True)


class VariantMeasurementRow(Base):
    """A device's newest timing of one variant (``docs/protocol.md`` §15; migration 0005).

    One row per ``(device_id, artifact_id)``; read per hardware class and model by
    :mod:`cloud.deployment.variants`.
    """

    __tablename__ = "variant_measurements"
    __table_args__ = (
        UniqueConstraint(
            "device_id", "artifact_id", name="uq_variant_measurements_device_artifact"
        ),
        Index("ix_variant_measurements_class", "hardware_id", "model_id", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(ID))
    hardware_id: Mapped[str] = mapped_column(String(ID))
    model_id: Mapped[str] = mapped_column(String(ID))
    version: Mapped[int] = mapped_column(Integer)
    artifact_id: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(20))
    threads: Mapped[int] = mapped_column(Integer)
    runs: Mapped[int] = mapped_column(Integer)
    median_us: Mapped[float] = mapped_column(Float)
    p99_us: Mapped[float] = mapped_column(Float)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cpu_features: Mapped[list[str]] = mapped_column(JSON)
    measured_at: Mapped[float] = mapped_column(Float)


# The rollout and shadow-evidence tables (0006) live in their own module; importing it here
# puts them on the same metadata for everyone who imports the fleet schema.
from cloud.fleet import schema_rollouts as _schema_rollouts  # noqa: E402, F401
