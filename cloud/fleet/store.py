"""The fleet's state in the registry database (SQLAlchemy; SQLite by default, PostgreSQL by URL).

Devices with their enrollment records (public keys, broker password hash, TLS serial: what
the broker ACL/CRL is rendered from), one-time enrollment tokens, API tokens, device status
(latest and history), telemetry (a time series with a retention bound), deployments with
per-device outcomes, federated runs with their rounds and the audit log. Key material never
enters the database: private keys stay in the key home (0600); the database holds public facts
and hashes only (tokens are stored as SHA-256 of a 256-bit random secret: a fast hash is
enough for a secret that cannot be guessed).

Every method is one transaction and is safe to call from several threads (a session per
call). Writes of device messages are idempotent by ``(device_id, msg_id)``: an MQTT QoS 1
repeat is stored once.

INTERFACE CONTRACT (the API, the ingestion worker and the service code against it).

Design notes:

- Tables are in :mod:`cloud.fleet.schema`, created by the migrations
  (:func:`cloud.db.upgrade_database`, also run by the constructor: idempotent).
- Labels: ``devices.groups`` / ``devices.tags`` (JSON lists, returned as is) plus one row
  per label in ``device_labels(device_id, kind, value)`` indexed on ``(kind, value)``;
  ``list_devices(group=/tag=)`` is an indexed ``EXISTS`` there, identical SQL on SQLite and
  PostgreSQL. Labels are validated identifiers, deduplicated and sorted.
- Device messages are inserted in chunks with the dialect's ``INSERT … ON CONFLICT
  (device_id, msg_id) DO NOTHING``; the statement's row count is the number of new rows.
  Messages of unknown devices are dropped before the insert.
- Latest state moves only forward: a device's newest status of a batch (by ``sent_at``)
  replaces the stored state only if ``sent_at > last_status_at``; ``last_seen`` is the
  maximum receive time of any status or telemetry.
- Cursors: ``list_devices`` takes the last device id of the previous page (plain text).
  ``list_deployments`` / ``list_runs`` / ``list_audit`` are newest first by
  ``(created_at, deployment_id)`` resp. ``(created_at, run_id)`` resp. ``(at, id)``; their
  cursor is URL-safe base64 (no padding) of ``"<float repr of the time>:<id>"`` — treat it
  as opaque. A cursor that does not decode
  is a ``ConfigError`` (code ``invalid_cursor``).
- ``list_devices(online=False)`` matches devices not known to be online (``online`` false
  or never reported).

Error codes: ``ConfigError`` code ``already_enrolled`` (add_device), ``invalid_cursor``,
``invalid_argument``; ``InvalidIdentifierError`` / ``ReservedNameError`` for ids;
``InvalidTokenError`` codes ``invalid_token``, ``token_used``, ``token_expired``;
``NotFoundError`` (code ``not_found``); ``RegistryError`` (code ``registry_error``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cloud.device_records import DeviceRecord
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
    Page,
    Role,
    StatusRecord,
    TelemetryAggregate,
    TelemetryRecord,
)
from cloud.fleet.schema import (
    ApiTokenRow,
    AuditRow,
    DeploymentDeviceRow,
    DeploymentRow,
    DeviceLabelRow,
    DeviceRow,
    DeviceStatusRow,
    EnrollmentTokenRow,
    FederationRoundRow,
    FederationRunRow,
    TelemetryRow,
)
from shared.errors import ConfigError, InvalidTokenError, NotFoundError, RegistryError
from shared.identifiers import IdentifierKind, check_identifier, check_new_name

if TYPE_CHECKING:
    from cloud.registry.registry import Registry

__all__ = ["FleetStore"]

_CHUNK = 500  # rows per INSERT … ON CONFLICT statement (well under both parameter limits)
_MAX_LIMIT = 1000
_GROUP = "group"
_TAG = "tag"


def _devices_table() -> Table:
    table = DeviceRow.__table__
    assert isinstance(table, Table)
    return table


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


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


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"invalid run id {str(run_id)[:80]!r}", code="invalid_argument")
    return run_id


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


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


def _serving_version(payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    serving = payload.get("serving")
    if not isinstance(serving, dict) or not serving:
        label = payload.get("model_version")
        return None, (str(label) if label is not None else None)
    version = serving.get("version")
    return serving, (str(version) if version is not None else None)


class FleetStore:
    """Fleet state on one database engine (shared with the model registry).

    Raises (every method): ``RegistryError`` for a database failure, ``NotFoundError`` for
    an unknown id, ``ConfigError`` (or a subclass) for invalid input, with a clear message.
    """

    def __init__(self, engine: Engine) -> None:
        from cloud.db import upgrade_database  # the tables exist whoever built the engine

        self.engine = engine
        try:
            upgrade_database(engine)
        except SQLAlchemyError as exc:
            raise RegistryError(
                f"cannot open fleet database: {exc.__class__.__name__}: {_first_line(exc)}"
            ) from exc
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_registry(cls, registry: Registry) -> FleetStore:
        """The fleet store on the registry's database."""
        return cls(registry.engine)

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
        check_new_name(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        group_list = _labels(groups, IdentifierKind.GROUP)
        tag_list = _labels(tags, IdentifierKind.TAG)
        already = ConfigError(f"device {device_id!r} is already enrolled", code="already_enrolled")
        try:
            with self._tx() as session:
                if session.get(DeviceRow, device_id) is not None:
                    raise already
                row = DeviceRow(
                    id=device_id,
                    profile=profile,
                    hardware_id=hardware_id,
                    groups=group_list,
                    tags=tag_list,
                    broker_identity=device_id,
                    enrolled_at=float(enrolled_at),
                )
                session.add(row)
                session.flush()
                self._write_labels(session, device_id, group_list, tag_list)
                return _device(row)
        except RegistryError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # a concurrent enrollment won
                raise already from exc
            raise

    @staticmethod
    def _write_labels(
        session: Session, device_id: str, groups: list[str] | None, tags: list[str] | None
    ) -> None:
        for kind, values in ((_GROUP, groups), (_TAG, tags)):
            if values is None:
                continue
            session.execute(
                delete(DeviceLabelRow).where(
                    DeviceLabelRow.device_id == device_id, DeviceLabelRow.kind == kind
                )
            )
            session.add_all(DeviceLabelRow(device_id=device_id, kind=kind, value=v) for v in values)
        session.flush()

    def _device_row(self, session: Session, device_id: str) -> DeviceRow:
        check_identifier(device_id, IdentifierKind.DEVICE)
        row = session.get(DeviceRow, device_id)
        if row is None:
            raise NotFoundError(f"unknown device {device_id!r}")
        return row

    def get_device(self, device_id: str) -> Device:
        """One device with its latest state (``NotFoundError``)."""
        with self._tx() as session:
            return _device(self._device_row(session, device_id))

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
        size = _limit(limit)
        query = select(DeviceRow)
        for kind, value, ikind in (
            (_GROUP, group, IdentifierKind.GROUP),
            (_TAG, tag, IdentifierKind.TAG),
        ):
            if value is not None:
                check_identifier(value, ikind)
                query = query.where(
                    exists().where(
                        DeviceLabelRow.device_id == DeviceRow.id,
                        DeviceLabelRow.kind == kind,
                        DeviceLabelRow.value == value,
                    )
                )
        if profile is not None:
            query = query.where(DeviceRow.profile == profile)
        if online is True:
            query = query.where(DeviceRow.online.is_(True))
        elif online is False:
            query = query.where(or_(DeviceRow.online.is_(False), DeviceRow.online.is_(None)))
        if model_version is not None:
            query = query.where(DeviceRow.model_version == model_version)
        if revoked is True:
            query = query.where(DeviceRow.revoked_at.is_not(None))
        elif revoked is False:
            query = query.where(DeviceRow.revoked_at.is_(None))
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor:
                raise ConfigError(f"invalid cursor {cursor!r}", code="invalid_cursor")
            query = query.where(DeviceRow.id > cursor)
        query = query.order_by(DeviceRow.id).limit(size + 1)
        with self._tx() as session:
            rows = list(session.scalars(query))
        more = len(rows) > size
        items = [_device(r) for r in rows[:size]]
        return Page(items=items, next_cursor=items[-1].device_id if more else None)

    def set_labels(
        self, device_id: str, *, groups: Iterable[str] | None, tags: Iterable[str] | None
    ) -> Device:
        """Replace a device's groups and/or tags (None: leave as is)."""
        group_list = None if groups is None else _labels(groups, IdentifierKind.GROUP)
        tag_list = None if tags is None else _labels(tags, IdentifierKind.TAG)
        with self._tx() as session:
            row = self._device_row(session, device_id)
            if group_list is not None:
                row.groups = group_list
            if tag_list is not None:
                row.tags = tag_list
            self._write_labels(session, device_id, group_list, tag_list)
            return _device(row)

    def mark_revoked(self, device_id: str, *, at: float) -> Device:
        """Mark revoked (idempotent)."""
        with self._tx() as session:
            row = self._device_row(session, device_id)
            if row.revoked_at is None:
                row.revoked_at = float(at)
            return _device(row)

    # --- enrollment records -----------------------------------------------------------------
    def _put_record(
        self,
        session: Session,
        record: DeviceRecord,
        *,
        new: bool,
        profile: str | None,
        tags: list[str] | None,
        now: float,
    ) -> None:
        check_new_name(record.device_id, IdentifierKind.DEVICE)
        check_identifier(record.hardware_id, IdentifierKind.HARDWARE)
        groups = _labels(record.groups, IdentifierKind.GROUP)
        row = session.get(DeviceRow, record.device_id)
        if row is None:
            row = DeviceRow(
                id=record.device_id,
                profile=profile,
                hardware_id=record.hardware_id,
                groups=groups,
                tags=tags or [],
                broker_identity=record.device_id,
                enrolled_at=float(record.enrolled_at),
            )
            session.add(row)
            session.flush()
            tags = tags or []
        else:
            if new and row.box_public is not None:
                raise ConfigError(
                    f"device {record.device_id!r} is already enrolled", code="already_enrolled"
                )
            row.hardware_id = record.hardware_id
            row.groups = groups
            row.enrolled_at = float(record.enrolled_at)
            if profile is not None:
                row.profile = profile
            if tags is not None:
                row.tags = tags
        row.box_public = record.box_public
        row.signing_public = record.signing_public
        row.password_hash = record.password_hash
        row.tls_serial = record.tls_serial
        row.supernode_public = record.supernode_public
        if record.revoked and row.revoked_at is None:  # a revoked device stays revoked
            row.revoked_at = float(now)
        self._write_labels(session, record.device_id, groups, tags)

    def put_enrollment_record(
        self,
        record: DeviceRecord,
        *,
        new: bool = False,
        profile: str | None = None,
        tags: Iterable[str] | None = None,
        now: float | None = None,
    ) -> None:
        """Store a device's enrollment record: public keys, the broker password's hash,
        the TLS certificate serial, groups, the revoked flag (a ``DeviceRecord`` has no
        private field; none is ever stored).

        A missing device row is created (with ``profile`` and ``tags``); an existing one
        gets the record's fields (``profile``/``tags`` only when given). A revoked record
        sets ``revoked_at`` (to ``now``, default the current time) unless already set; a
        revoked device is never un-revoked.

        Args:
            new: a fresh enrollment: ``ConfigError`` code ``already_enrolled`` if the device
                already has a record (a row without one is completed).
        """
        tag_list = None if tags is None else _labels(tags, IdentifierKind.TAG)
        at = time.time() if now is None else now
        already = ConfigError(
            f"device {record.device_id!r} is already enrolled", code="already_enrolled"
        )
        try:
            with self._tx() as session:
                self._put_record(session, record, new=new, profile=profile, tags=tag_list, now=at)
        except RegistryError as exc:
            if new and isinstance(exc.__cause__, IntegrityError):  # a concurrent enrollment
                raise already from exc
            raise

    def put_enrollment_records(
        self, records: Iterable[DeviceRecord], *, now: float | None = None
    ) -> int:
        """Insert or replace many records in one transaction (an import: all or nothing;
        idempotent). Returns how many were stored."""
        at = time.time() if now is None else now
        count = 0
        with self._tx() as session:
            for record in records:
                self._put_record(session, record, new=False, profile=None, tags=None, now=at)
                count += 1
        return count

    def enrollment_records(self) -> dict[str, DeviceRecord]:
        """Every device's enrollment record by id, revoked ones included (rows without a
        record — ``add_device`` alone — are left out)."""
        with self._tx() as session:
            rows = session.scalars(
                select(DeviceRow).where(DeviceRow.box_public.is_not(None)).order_by(DeviceRow.id)
            )
            return {
                row.id: DeviceRecord(
                    device_id=row.id,
                    hardware_id=row.hardware_id,
                    groups=list(row.groups or []),
                    box_public=row.box_public or "",
                    signing_public=row.signing_public or "",
                    password_hash=row.password_hash or "",
                    enrolled_at=int(row.enrolled_at),
                    revoked=row.revoked_at is not None,
                    supernode_public=row.supernode_public or "",
                    tls_serial=row.tls_serial or "",
                )
                for row in rows
            }

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
        check_new_name(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        group_list = _labels(groups, IdentifierKind.GROUP)
        tag_list = _labels(tags, IdentifierKind.TAG)
        if not ttl_s > 0:
            raise ConfigError(f"ttl_s must be positive, not {ttl_s!r}", code="invalid_argument")
        secret = secrets.token_urlsafe(32)
        row = EnrollmentTokenRow(
            token_id=uuid.uuid4().hex,
            token_sha256=_hash(secret),
            device_id=device_id,
            profile=profile,
            hardware_id=hardware_id,
            groups=group_list,
            tags=tag_list,
            created_at=float(now),
            expires_at=float(now) + float(ttl_s),
        )
        with self._tx() as session:
            session.add(row)
            session.flush()
            return secret, _enrollment(row)

    def redeem_enrollment_token(self, secret: str, *, now: float) -> EnrollmentToken:
        """Mark the token used, atomically (two redeemers: one wins).

        Raises:
            InvalidTokenError (a ``SecurityError``; codes ``invalid_token`` — unknown,
            ``token_used``, ``token_expired``).
        """
        if not isinstance(secret, str) or not secret:
            raise InvalidTokenError("unknown enrollment token", code="invalid_token")
        digest = _hash(secret)
        with self._tx() as session:
            result = session.execute(
                update(EnrollmentTokenRow)
                .where(
                    EnrollmentTokenRow.token_sha256 == digest,
                    EnrollmentTokenRow.used_at.is_(None),
                    EnrollmentTokenRow.expires_at > float(now),
                )
                .values(used_at=float(now))
                .execution_options(synchronize_session=False)
            )
            won = getattr(result, "rowcount", 0) == 1
            row = session.scalars(
                select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_sha256 == digest)
            ).one_or_none()
            if row is None or not hmac.compare_digest(row.token_sha256, digest):
                raise InvalidTokenError("unknown enrollment token", code="invalid_token")
            session.refresh(row)
            if won:
                return _enrollment(row)
            if row.used_at is not None:
                raise InvalidTokenError(
                    f"enrollment token {row.token_id} was already used", code="token_used"
                )
            raise InvalidTokenError(
                f"enrollment token {row.token_id} has expired", code="token_expired"
            )

    # --- API tokens -----------------------------------------------------------------------
    def create_api_token(self, role: Role, *, name: str, now: float) -> tuple[str, ApiToken]:
        """A new bearer token; returns (the secret, shown once; record)."""
        try:
            role = Role(role)
        except ValueError as exc:
            raise ConfigError(
                f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}",
                code="invalid_argument",
            ) from exc
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError("a token name must be 1-200 characters", code="invalid_argument")
        secret = secrets.token_urlsafe(32)
        row = ApiTokenRow(
            token_id=uuid.uuid4().hex,
            token_sha256=_hash(secret),
            role=role.value,
            name=name,
            created_at=float(now),
        )
        with self._tx() as session:
            session.add(row)
            session.flush()
            return secret, _api_token(row)

    def authenticate(self, secret: str) -> ApiToken | None:
        """The unrevoked token whose secret this is, or None (constant-time compare)."""
        if not isinstance(secret, str) or not secret:
            return None
        digest = _hash(secret)
        with self._tx() as session:
            row = session.scalars(
                select(ApiTokenRow).where(ApiTokenRow.token_sha256 == digest)
            ).one_or_none()
            if row is None or not hmac.compare_digest(row.token_sha256, digest):
                return None
            if row.revoked_at is not None:
                return None
            return _api_token(row)

    def list_api_tokens(self) -> list[ApiToken]:
        """Every token (no secrets)."""
        with self._tx() as session:
            rows = session.scalars(
                select(ApiTokenRow).order_by(ApiTokenRow.created_at, ApiTokenRow.token_id)
            )
            return [_api_token(r) for r in rows]

    def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken:
        """Revoke a token (idempotent; ``NotFoundError``)."""
        with self._tx() as session:
            row = session.get(ApiTokenRow, token_id) if isinstance(token_id, str) else None
            if row is None:
                raise NotFoundError(f"unknown API token {str(token_id)[:80]!r}")
            if row.revoked_at is None:
                row.revoked_at = float(at)
            return _api_token(row)

    # --- device status and telemetry ------------------------------------------------------
    @staticmethod
    def _known(session: Session, device_ids: set[str]) -> set[str]:
        known: set[str] = set()
        ids = sorted(device_ids)
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            known.update(session.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(chunk))))
        return known

    def _insert_new(self, session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
        """Insert, skipping existing ``(device_id, msg_id)``; returns how many were new."""
        if not rows:
            return 0
        if session.get_bind().dialect.name == "postgresql":
            return self._insert_new_unnest(session, table, rows)
        # One statement, executed with a parameter list: SQLAlchemy batches it into
        # multi-row INSERTs ("insertmanyvalues") and compiles it once (cached), where a
        # ``.values(list)`` statement is compiled anew for every batch.
        stmt = self._insert(session)(table).on_conflict_do_nothing(
            index_elements=["device_id", "msg_id"]
        )
        # RETURNING lists exactly the rows inserted (a skipped repeat returns nothing);
        # the driver's rowcount is not reliable for this on every backend.
        result = session.connection().execute(stmt.returning(table.c.id), rows)
        return len(result.all())

    @staticmethod
    def _insert_new_unnest(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
        """PostgreSQL: ``INSERT … SELECT FROM unnest(one array per column)``.

        One short statement with one parameter per column, whatever the batch size: the
        server parses it once and the driver caches it. A multi-row VALUES list (thousands of
        placeholders) cost ~0.3 ms of CPU per row in SQL compilation and query conversion,
        which capped ingestion far below the broker's rate (benchmarks/control_plane.py).
        """
        names = list(rows[0])
        columns: list[Any] = []
        params: dict[str, list[Any]] = {}
        for name in names:
            column = table.c[name]
            values = [r[name] for r in rows]
            if isinstance(column.type, JSON):  # arrays of json travel as text, cast back
                params[name] = [json.dumps(v) if v is not None else None for v in values]
                columns.append(cast(func.unnest(bindparam(name, type_=ARRAY(Text))), JSON))
            else:
                params[name] = values
                columns.append(func.unnest(bindparam(name, type_=ARRAY(column.type))))
        source = select(*columns)
        stmt = (
            postgresql.insert(table)
            .from_select(names, source)
            .on_conflict_do_nothing(index_elements=["device_id", "msg_id"])
            .returning(table.c.id)
        )
        return len(session.execute(stmt, params).all())

    @staticmethod
    def _bump_last_seen(session: Session, seen: dict[str, float]) -> None:
        if not seen:
            return
        table = _devices_table()
        stmt = (
            table.update()
            .where(
                table.c.id == bindparam("b_id"),
                or_(table.c.last_seen.is_(None), table.c.last_seen < bindparam("b_seen")),
            )
            .values(last_seen=bindparam("b_seen"))
        )
        session.connection().execute(
            stmt, [{"b_id": d, "b_seen": t} for d, t in sorted(seen.items())]
        )

    def record_statuses(self, batch: list[StatusRecord]) -> int:
        """Store statuses (history) and update each device's latest state; returns how many
        were new. Repeats (same device and msg_id) are skipped; statuses of unknown devices
        are skipped and counted by the caller via the return value."""
        if not batch:
            return 0
        with self._tx() as session:
            known = self._known(session, {r.device_id for r in batch})
            records = [r for r in batch if r.device_id in known]
            if not records:
                return 0
            unique: dict[tuple[str, str], StatusRecord] = {}
            for r in records:
                unique.setdefault((r.device_id, r.msg_id), r)
            new = self._insert_new(
                session,
                DeviceStatusRow.__table__,
                [
                    {
                        "device_id": r.device_id,
                        "msg_id": r.msg_id,
                        "received_at": float(r.received_at),
                        "sent_at": float(r.sent_at),
                        "state": r.state,
                        "payload": r.payload,
                    }
                    for r in unique.values()
                ],
            )
            newest: dict[str, StatusRecord] = {}
            seen: dict[str, float] = {}
            for r in records:
                best = newest.get(r.device_id)
                if best is None or r.sent_at > best.sent_at:
                    newest[r.device_id] = r
                seen[r.device_id] = max(seen.get(r.device_id, r.received_at), r.received_at)
            table = _devices_table()
            stmt = (
                table.update()
                .where(
                    table.c.id == bindparam("b_id"),
                    or_(
                        table.c.last_status_at.is_(None),
                        table.c.last_status_at < bindparam("b_sent"),
                    ),
                )
                .values(
                    online=bindparam("b_online"),
                    state=bindparam("b_state"),
                    serving=bindparam("b_serving"),
                    model_version=bindparam("b_version"),
                    last_status_at=bindparam("b_sent"),
                )
            )
            params = []
            for device_id, r in sorted(newest.items()):
                serving, version = _serving_version(r.payload)
                params.append(
                    {
                        "b_id": device_id,
                        "b_sent": float(r.sent_at),
                        "b_online": r.state != "offline",
                        "b_state": r.state,
                        "b_serving": serving,
                        "b_version": version,
                    }
                )
            session.connection().execute(stmt, params)
            self._bump_last_seen(session, seen)
            return new

    def record_telemetry(self, batch: list[TelemetryRecord]) -> int:
        """Store telemetry (repeats skipped, unknown devices skipped); returns how many new."""
        if not batch:
            return 0
        with self._tx() as session:
            known = self._known(session, {r.device_id for r in batch})
            records = [r for r in batch if r.device_id in known]
            if not records:
                return 0
            unique: dict[tuple[str, str], TelemetryRecord] = {}
            seen: dict[str, float] = {}
            for r in records:
                unique.setdefault((r.device_id, r.msg_id), r)
                seen[r.device_id] = max(seen.get(r.device_id, r.received_at), r.received_at)
            new = self._insert_new(
                session,
                TelemetryRow.__table__,
                [
                    {
                        "device_id": r.device_id,
                        "msg_id": r.msg_id,
                        "received_at": float(r.received_at),
                        "sent_at": float(r.sent_at),
                        "model_version": r.model_version,
                        "requests": int(r.requests),
                        "errors": int(r.errors),
                        "latency_p50_ms": float(r.latency_p50_ms),
                        "latency_p95_ms": float(r.latency_p95_ms),
                        "latency_p99_ms": float(r.latency_p99_ms),
                        "latency_count": int(r.latency_count),
                        "payload": r.payload,
                    }
                    for r in unique.values()
                ],
            )
            self._bump_last_seen(session, seen)
            return new

    def status_history(self, device_id: str, *, limit: int = 50) -> list[StatusRecord]:
        """The device's newest statuses first."""
        size = _limit(limit)
        with self._tx() as session:
            self._device_row(session, device_id)
            rows = session.scalars(
                select(DeviceStatusRow)
                .where(DeviceStatusRow.device_id == device_id)
                .order_by(DeviceStatusRow.received_at.desc(), DeviceStatusRow.id.desc())
                .limit(size)
            )
            return [_status(r) for r in rows]

    def latest_telemetry(self, device_id: str) -> TelemetryRecord | None:
        """The device's newest telemetry."""
        with self._tx() as session:
            self._device_row(session, device_id)
            row = session.scalars(
                select(TelemetryRow)
                .where(TelemetryRow.device_id == device_id)
                .order_by(TelemetryRow.received_at.desc(), TelemetryRow.id.desc())
                .limit(1)
            ).first()
            return None if row is None else _telemetry(row)

    def telemetry_aggregates(
        self, *, since: float, model_version: str | None = None
    ) -> list[TelemetryAggregate]:
        """Per model version over ``received_at >= since``: devices, request and error
        counts, error rate, and request-weighted p50/p95/p99 of the windows' percentiles.

        A window's percentiles are weighted by its request count; windows without latency
        samples (``latency_count == 0``) do not contribute to the percentiles (None when no
        window of the version has any)."""
        t = TelemetryRow
        weight = case((t.latency_count > 0, t.requests), else_=0)
        query = (
            select(
                t.model_version,
                func.count(func.distinct(t.device_id)),
                func.coalesce(func.sum(t.requests), 0),
                func.coalesce(func.sum(t.errors), 0),
                func.sum(weight),
                func.sum(t.latency_p50_ms * weight),
                func.sum(t.latency_p95_ms * weight),
                func.sum(t.latency_p99_ms * weight),
            )
            .where(t.received_at >= float(since))
            .group_by(t.model_version)
        )
        if model_version is not None:
            query = query.where(t.model_version == model_version)
        with self._tx() as session:
            rows = session.execute(query).all()
        out = []
        for version, devices, requests, errors, w, p50, p95, p99 in rows:
            total_w = float(w or 0)

            def weighted(value: Any, total: float = total_w) -> float | None:
                return float(value) / total if total > 0 and value is not None else None

            requests, errors = int(requests), int(errors)
            out.append(
                TelemetryAggregate(
                    model_version=version,
                    devices=int(devices),
                    requests=requests,
                    errors=errors,
                    error_rate=errors / requests if requests > 0 else 0.0,
                    latency_p50_ms=weighted(p50),
                    latency_p95_ms=weighted(p95),
                    latency_p99_ms=weighted(p99),
                )
            )
        out.sort(key=lambda a: (a.model_version is None, a.model_version or ""))
        return out

    def prune_telemetry(self, *, older_than: float) -> int:
        """Delete telemetry received before ``older_than`` (the retention bound)."""
        with self._tx() as session:
            result = session.execute(
                delete(TelemetryRow)
                .where(TelemetryRow.received_at < float(older_than))
                .execution_options(synchronize_session=False)
            )
            return max(getattr(result, "rowcount", 0), 0)

    # --- deployments ----------------------------------------------------------------------
    def create_deployment(
        self, version_ref: str, device_ids: list[str], *, created_by: str, now: float
    ) -> Deployment:
        """A ``pending`` deployment with one ``pending`` outcome per device."""
        if not isinstance(version_ref, str) or not version_ref or len(version_ref) > 200:
            raise ConfigError(f"invalid version reference {version_ref!r}", code="invalid_argument")
        ids = list(dict.fromkeys(check_identifier(d, IdentifierKind.DEVICE) for d in device_ids))
        row = DeploymentRow(
            deployment_id=uuid.uuid4().hex,
            version_ref=version_ref,
            state=DeploymentState.PENDING.value,
            created_at=float(now),
            created_by=created_by,
        )
        outcomes = [
            DeploymentDeviceRow(deployment_id=row.deployment_id, device_id=d, outcome="pending")
            for d in ids
        ]
        with self._tx() as session:
            session.add(row)
            session.flush()
            session.add_all(outcomes)
            session.flush()
            return _deployment(row, outcomes)

    @staticmethod
    def _outcomes(
        session: Session, deployment_ids: list[str]
    ) -> dict[str, list[DeploymentDeviceRow]]:
        out: dict[str, list[DeploymentDeviceRow]] = {d: [] for d in deployment_ids}
        if deployment_ids:
            rows = session.scalars(
                select(DeploymentDeviceRow).where(
                    DeploymentDeviceRow.deployment_id.in_(deployment_ids)
                )
            )
            for r in rows:
                out[r.deployment_id].append(r)
        return out

    @staticmethod
    def _deployment_row(session: Session, deployment_id: str) -> DeploymentRow:
        row = session.get(DeploymentRow, deployment_id) if isinstance(deployment_id, str) else None
        if row is None:
            raise NotFoundError(f"unknown deployment {str(deployment_id)[:80]!r}")
        return row

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
        new_state = None
        if state is not None:
            try:
                new_state = DeploymentState(state)
            except ValueError as exc:
                raise ConfigError(
                    f"unknown deployment state {state!r}", code="invalid_argument"
                ) from exc
        with self._tx() as session:
            row = self._deployment_row(session, deployment_id)
            if new_state is not None:
                row.state = new_state.value
            if finished_at is not None:
                row.finished_at = float(finished_at)
            if error is not None:
                row.error = error[:2000]
            if bytes_sent is not None:
                row.bytes_sent = int(bytes_sent)
            for o in outcomes or []:
                check_identifier(o.device_id, IdentifierKind.DEVICE)
                session.merge(
                    DeploymentDeviceRow(
                        deployment_id=row.deployment_id,
                        device_id=o.device_id,
                        outcome=o.outcome,
                        reason=None if o.reason is None else o.reason[:2000],
                        precision=o.precision,
                        encoding=o.encoding,
                    )
                )
            session.flush()
            return _deployment(row, self._outcomes(session, [row.deployment_id])[row.deployment_id])

    def get_deployment(self, deployment_id: str) -> Deployment:
        """One deployment with its per-device outcomes."""
        with self._tx() as session:
            row = self._deployment_row(session, deployment_id)
            return _deployment(row, self._outcomes(session, [row.deployment_id])[row.deployment_id])

    def list_deployments(self, *, cursor: str | None = None, limit: int = 50) -> Page[Deployment]:
        """Newest first (by ``created_at``, then id; cursor: see the module docstring)."""
        size = _limit(limit)
        d = DeploymentRow
        query = select(d)
        if cursor is not None:
            at, key = _decode_cursor(cursor)
            query = query.where(
                or_(d.created_at < at, and_(d.created_at == at, d.deployment_id < key))
            )
        query = query.order_by(d.created_at.desc(), d.deployment_id.desc()).limit(size + 1)
        with self._tx() as session:
            rows = list(session.scalars(query))
            more = len(rows) > size
            rows = rows[:size]
            outcomes = self._outcomes(session, [r.deployment_id for r in rows])
            items = [_deployment(r, outcomes[r.deployment_id]) for r in rows]
        last = rows[-1] if rows else None
        next_cursor = _encode_cursor(last.created_at, last.deployment_id) if more and last else None
        return Page(items=items, next_cursor=next_cursor)

    # --- federated runs -------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        *,
        plan: dict[str, Any],
        created_by: str,
        now: float,
        name: str | None = None,
    ) -> FederationRun:
        """A ``pending`` federated run (``run_id`` is the plan's: the registry lineage's).

        Raises:
            ConfigError: an invalid id (``invalid_argument``) or one already used
                (``run_exists``).
        """
        row = FederationRunRow(
            run_id=_run_id(run_id),
            name=None if name is None else name[:200],
            state=FederationRunState.PENDING.value,
            plan=dict(plan),
            created_at=float(now),
            created_by=created_by[:200],
        )
        try:
            with self._tx() as session:
                if session.get(FederationRunRow, row.run_id) is not None:
                    raise ConfigError(f"run {row.run_id!r} already exists", code="run_exists")
                session.add(row)
                session.flush()
                return _fed_run(row, [])
        except RegistryError as exc:  # a concurrent insert of the same id
            if isinstance(exc.__cause__, IntegrityError):
                raise ConfigError(f"run {row.run_id!r} already exists", code="run_exists") from exc
            raise

    @staticmethod
    def _fed_rounds(session: Session, run_ids: list[str]) -> dict[str, list[FederationRoundRow]]:
        out: dict[str, list[FederationRoundRow]] = {r: [] for r in run_ids}
        if run_ids:
            rows = session.scalars(
                select(FederationRoundRow).where(FederationRoundRow.run_id.in_(run_ids))
            )
            for r in rows:
                out[r.run_id].append(r)
        return out

    @staticmethod
    def _fed_run_row(session: Session, run_id: str) -> FederationRunRow:
        row = session.get(FederationRunRow, run_id) if isinstance(run_id, str) else None
        if row is None:
            raise NotFoundError(f"unknown federated run {str(run_id)[:80]!r}")
        return row

    def update_run(
        self,
        run_id: str,
        *,
        state: FederationRunState | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        error: str | None = None,
        best_version: str | None = None,
        name: str | None = None,
    ) -> FederationRun:
        """Progress of a run (None: unchanged); returns the run with its rounds."""
        new_state = None
        if state is not None:
            try:
                new_state = FederationRunState(state)
            except ValueError as exc:
                raise ConfigError(
                    f"unknown federated run state {state!r}", code="invalid_argument"
                ) from exc
        with self._tx() as session:
            row = self._fed_run_row(session, run_id)
            if new_state is not None:
                row.state = new_state.value
            if started_at is not None:
                row.started_at = float(started_at)
            if finished_at is not None:
                row.finished_at = float(finished_at)
            if error is not None:
                row.error = error[:2000]
            if best_version is not None:
                row.best_version = best_version[:200]
            if name is not None:
                row.name = name[:200]
            session.flush()
            return _fed_run(row, self._fed_rounds(session, [row.run_id])[row.run_id])

    def add_round(self, run_id: str, report: FederationRound) -> bool:
        """Store one finished round; idempotent per ``(run_id, round)`` (a repeat is
        ignored). Non-finite accuracy or loss is stored as None. Returns whether it was new.
        """
        if isinstance(report.round, bool) or not isinstance(report.round, int):
            raise ConfigError(f"invalid round {report.round!r}", code="invalid_argument")
        if report.round < 0:
            raise ConfigError(f"invalid round {report.round!r}", code="invalid_argument")
        values = {
            "run_id": run_id,
            "round": report.round,
            "accuracy": _finite(report.accuracy),
            "loss": _finite(report.loss),
            "participants": int(report.participants),
            "rejected": int(report.rejected),
            "failed": int(report.failed),
            "bytes_up": int(report.bytes_up),
            "bytes_down": int(report.bytes_down),
            "seconds": _finite(report.seconds) or 0.0,
            "version": None if report.version is None else report.version[:200],
        }
        with self._tx() as session:
            self._fed_run_row(session, run_id)
            table = FederationRoundRow.__table__
            stmt = self._insert(session)(table).values(values)
            stmt = stmt.on_conflict_do_nothing(index_elements=["run_id", "round"])
            return len(session.execute(stmt.returning(table.c.round)).all()) == 1

    def get_run(self, run_id: str) -> FederationRun:
        """One federated run with its rounds."""
        with self._tx() as session:
            row = self._fed_run_row(session, run_id)
            return _fed_run(row, self._fed_rounds(session, [row.run_id])[row.run_id])

    def list_runs(self, *, cursor: str | None = None, limit: int = 50) -> Page[FederationRun]:
        """Newest first (by ``created_at``, then id; cursor: see the module docstring)."""
        size = _limit(limit)
        r = FederationRunRow
        query = select(r)
        if cursor is not None:
            at, key = _decode_cursor(cursor)
            query = query.where(or_(r.created_at < at, and_(r.created_at == at, r.run_id < key)))
        query = query.order_by(r.created_at.desc(), r.run_id.desc()).limit(size + 1)
        with self._tx() as session:
            rows = list(session.scalars(query))
            more = len(rows) > size
            rows = rows[:size]
            rounds = self._fed_rounds(session, [row.run_id for row in rows])
            items = [_fed_run(row, rounds[row.run_id]) for row in rows]
        last = rows[-1] if rows else None
        next_cursor = _encode_cursor(last.created_at, last.run_id) if more and last else None
        return Page(items=items, next_cursor=next_cursor)

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
        with self._tx() as session:
            session.add(
                AuditRow(
                    at=float(at),
                    actor=actor[:200],
                    action=action[:100],
                    target=None if target is None else target[:200],
                    result=result[:100],
                    detail=detail,
                )
            )

    def list_audit(self, *, cursor: str | None = None, limit: int = 100) -> Page[AuditEntry]:
        """Newest first (by ``at``, then id; cursor: see the module docstring)."""
        size = _limit(limit)
        a = AuditRow
        query = select(a)
        if cursor is not None:
            at, key = _decode_cursor(cursor)
            try:
                entry_id = int(key)
            except ValueError as exc:
                raise ConfigError(f"invalid cursor {cursor[:80]!r}", code="invalid_cursor") from exc
            query = query.where(or_(a.at < at, and_(a.at == at, a.id < entry_id)))
        query = query.order_by(a.at.desc(), a.id.desc()).limit(size + 1)
        with self._tx() as session:
            rows = list(session.scalars(query))
        more = len(rows) > size
        rows = rows[:size]
        items = [_audit(r) for r in rows]
        next_cursor = _encode_cursor(rows[-1].at, rows[-1].id) if more and rows else None
        return Page(items=items, next_cursor=next_cursor)
