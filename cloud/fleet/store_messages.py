"""Fleet store: device status, telemetry, telemetry aggregates and retention."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, Table, Text, bindparam, case, cast, delete, func, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from cloud.fleet._base import StoreBase, _limit, _status, _telemetry
from cloud.fleet.records import StatusRecord, TelemetryAggregate, TelemetryRecord
from cloud.fleet.schema import DeviceRow, DeviceStatusRow, TelemetryRow

_CHUNK = 500  # rows per INSERT … ON CONFLICT statement (well under both parameter limits)


def _devices_table() -> Table:
    table = DeviceRow.__table__
    assert isinstance(table, Table)
    return table


def _serving_version(payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    serving = payload.get("serving")
    if not isinstance(serving, dict) or not serving:
        label = payload.get("model_version")
        return None, (str(label) if label is not None else None)
    version = serving.get("version")
    return serving, (str(version) if version is not None else None)


class MessagesMixin(StoreBase):
    """Device status, telemetry, aggregates and retention (a ``FleetStore`` mixin)."""

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
