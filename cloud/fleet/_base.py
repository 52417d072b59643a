"""The fleet store's shared machinery (package-private): the engine, one transaction per
call, the dialect's ``insert``, argument checks, cursors and the row → record converters.

:class:`cloud.fleet.store.FleetStore` is this base plus one mixin per concern
(``store_devices``, ``store_tokens``, ``store_messages``, ``store_deployments``,
``store_runs``, ``store_audit``); see :mod:`cloud.fleet.store` for the contract.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cloud.fleet.records import (
    ApiToken,
    AuditEntry,
    Deployment,
    DeploymentState,
    Device,
    DeviceOutcome,
    EnrollmentToken,
    FederationRound,
    FederationRun,
    FederationRunState,
    Role,
    StatusRecord,
    TelemetryRecord,
)
from cloud.fleet.schema import (
    ApiTokenRow,
    AuditRow,
    DeploymentDeviceRow,
    DeploymentRow,
    DeviceRow,
    DeviceStatusRow,
    EnrollmentTokenRow,
    FederationRoundRow,
    FederationRunRow,
    TelemetryRow,
)
from shared.errors import ConfigError, NotFoundError, RegistryError
from shared.identifiers import IdentifierKind, check_identifier

_MAX_LIMIT = 1000

_E = TypeVar("_E", bound=Enum)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _labels(values: Iterable[str], kind: IdentifierKind) -> list[str]:
    if isinstance(values, str):  # a bare string would iterate character by character
        raise ConfigError(f"{kind}s must be a list of names, not a string", code="invalid_argument")
    return sorted({check_identifier(v, kind) for v in values})


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(
            f"limit must be a positive integer, not {limit!r}", code="invalid_argument"
        )
    return min(limit, _MAX_LIMIT)


def _encode_cursor(at: float, key: str | int) -> str:
    raw = f"{at!r}:{key}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
        at, sep, key = text.partition(":")
        if not sep or not key:
            raise ValueError("no separator")
        return float(at), key
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise ConfigError(f"invalid cursor {cursor[:80]!r}", code="invalid_cursor") from exc


def _enum_arg(kind: type[_E], value: object, what: str) -> _E:
    """``value`` as a member of ``kind`` (``ConfigError`` code ``invalid_argument``)."""
    try:
        return kind(value)
    except ValueError as exc:
        raise ConfigError(f"unknown {what} {value!r}", code="invalid_argument") from exc


def _device(row: DeviceRow) -> Device:
    return Device(
        device_id=row.id,
        profile=row.profile,
        hardware_id=row.hardware_id,
        groups=list(row.groups or []),
        tags=list(row.tags or []),
        broker_identity=row.broker_identity,
        enrolled_at=row.enrolled_at,
        revoked_at=row.revoked_at,
        online=row.online,
        last_seen=row.last_seen,
        state=row.state,
        serving=row.serving,
        model_version=row.model_version,
    )


def _enrollment(row: EnrollmentTokenRow) -> EnrollmentToken:
    return EnrollmentToken(
        token_id=row.token_id,
        device_id=row.device_id,
        profile=row.profile,
        hardware_id=row.hardware_id,
        groups=list(row.groups or []),
        tags=list(row.tags or []),
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
    )


def _api_token(row: ApiTokenRow) -> ApiToken:
    return ApiToken(
        token_id=row.token_id,
        role=Role(row.role),
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _status(row: DeviceStatusRow) -> StatusRecord:
    return StatusRecord(
        device_id=row.device_id,
        msg_id=row.msg_id,
        received_at=row.received_at,
        sent_at=row.sent_at,
        state=row.state,
        payload=dict(row.payload or {}),
    )


def _telemetry(row: TelemetryRow) -> TelemetryRecord:
    return TelemetryRecord(
        device_id=row.device_id,
        msg_id=row.msg_id,
        received_at=row.received_at,
        sent_at=row.sent_at,
        model_version=row.model_version,
        requests=row.requests,
        errors=row.errors,
        latency_p50_ms=row.latency_p50_ms,
        latency_p95_ms=row.latency_p95_ms,
        latency_p99_ms=row.latency_p99_ms,
        latency_count=row.latency_count,
        payload=dict(row.payload or {}),
    )


def _outcome(row: DeploymentDeviceRow) -> DeviceOutcome:
    return DeviceOutcome(
        device_id=row.device_id,
        outcome=row.outcome,
        reason=row.reason,
        precision=row.precision,
        encoding=row.encoding,
        variant=row.variant,
    )


def _deployment(row: DeploymentRow, outcomes: Sequence[DeploymentDeviceRow]) -> Deployment:
    return Deployment(
        deployment_id=row.deployment_id,
        version_ref=row.version_ref,
        state=DeploymentState(row.state),
        created_at=row.created_at,
        created_by=row.created_by,
        finished_at=row.finished_at,
        error=row.error,
        devices=[_outcome(o) for o in sorted(outcomes, key=lambda o: o.device_id)],
        bytes_sent=row.bytes_sent,
    )


def _fed_round(row: FederationRoundRow) -> FederationRound:
    return FederationRound(
        round=row.round,
        accuracy=row.accuracy,
        loss=row.loss,
        participants=row.participants,
        rejected=row.rejected,
        failed=row.failed,
        bytes_up=row.bytes_up,
        bytes_down=row.bytes_down,
        seconds=row.seconds,
        version=row.version,
    )


def _fed_run(row: FederationRunRow, rounds: Sequence[FederationRoundRow]) -> FederationRun:
    return FederationRun(
        run_id=row.run_id,
        name=row.name,
        state=FederationRunState(row.state),
        plan=dict(row.plan),
        created_at=row.created_at,
        created_by=row.created_by,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        best_version=row.best_version,
        rounds=[_fed_round(r) for r in sorted(rounds, key=lambda r: r.round)],
    )


def _audit(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        entry_id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        result=row.result,
        detail=row.detail,
    )


class StoreBase:
    """The engine and the session factory, with the helpers every concern uses."""

    engine: Engine
    _sessions: sessionmaker[Session]

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """One transaction; database errors become ``RegistryError``."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise RegistryError(
                f"fleet database error: {exc.__class__.__name__}: {_first_line(exc)}"
            ) from exc

    def _insert(self, session: Session) -> Any:
        """The dialect's ``insert`` (with ``on_conflict_do_nothing``)."""
        name = session.get_bind().dialect.name
        if name == "postgresql":
            return postgresql.insert
        if name == "sqlite":
            return sqlite.insert
        raise RegistryError(f"fleet store supports sqlite and postgresql, not {name}")

    def _device_row(self, session: Session, device_id: str) -> DeviceRow:
        check_identifier(device_id, IdentifierKind.DEVICE)
        row = session.get(DeviceRow, device_id)
        if row is None:
            raise NotFoundError(f"unknown device {device_id!r}")
        return row
