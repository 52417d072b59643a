"""Fleet store: named rollout policies and the field evidence the rollout gates read
(telemetry windows and shadow reports); a base of
:class:`cloud.fleet.store_rollouts.RolloutsMixin`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from cloud.fleet._base import StoreBase
from cloud.fleet.schema import TelemetryRow
from cloud.fleet.schema_rollouts import RolloutPolicyRow, ShadowReportRow
from cloud.rollout.gates import ShadowWindow, TelemetryWindow
from cloud.rollout.records import ShadowRecord
from shared.errors import NotFoundError
from shared.identifiers import IdentifierKind, check_identifier

__all__ = ["RolloutEvidenceMixin"]


class RolloutEvidenceMixin(StoreBase):
    """Named policies and evidence."""

    # -- named policies -------------------------------------------------------------------

    def save_rollout_policy(self, name: str, policy: dict[str, Any], *, now: float) -> None:
        """Create or replace a named policy (``policy`` is a validated policy's JSON)."""
        check_identifier(name, IdentifierKind.DEVICE)
        with self._tx() as session:
            row = session.get(RolloutPolicyRow, name)
            if row is None:
                session.add(
                    RolloutPolicyRow(name=name, policy=policy, created_at=now, updated_at=now)
                )
            else:
                row.policy, row.updated_at = policy, float(now)

    def get_rollout_policy(self, name: str) -> dict[str, Any]:
        """A named policy's JSON (``NotFoundError`` if there is none)."""
        with self._tx() as session:
            row = session.get(RolloutPolicyRow, name) if isinstance(name, str) else None
            if row is None:
                raise NotFoundError(f"no rollout policy named {str(name)[:80]!r}")
            return dict(row.policy)

    def list_rollout_policies(self) -> dict[str, dict[str, Any]]:
        """Every named policy, by name."""
        with self._tx() as session:
            rows = session.scalars(select(RolloutPolicyRow).order_by(RolloutPolicyRow.name))
            return {r.name: dict(r.policy) for r in rows}

    # -- evidence -------------------------------------------------------------------------

    def record_shadow_reports(self, batch: list[ShadowRecord]) -> int:
        """Store shadow reports idempotently by ``(device_id, msg_id)``; how many were new."""
        if not batch:
            return 0
        rows = [dict(vars(r)) for r in batch]
        table = ShadowReportRow.__table__
        with self._tx() as session:
            stmt = self._insert(session)(table).on_conflict_do_nothing(
                index_elements=["device_id", "msg_id"]
            )
            # RETURNING lists exactly the rows inserted (as record_telemetry does).
            return len(session.connection().execute(stmt.returning(table.c.id), rows).all())

    def shadow_windows(
        self, device_ids: list[str], *, since: float, model_id: str, version: int
    ) -> list[ShadowWindow]:
        """Shadow reports about ``model_id@version`` received since ``since``."""
        s = ShadowReportRow
        query = select(s).where(
            s.device_id.in_(device_ids),
            s.received_at >= since,
            s.model_id == model_id,
            s.version == version,
        )
        with self._tx() as session:
            return [
                ShadowWindow(
                    r.device_id,
                    r.received_at,
                    r.samples,
                    r.agreement,
                    r.mean_abs_diff,
                    r.candidate_p95_ms,
                    r.serving_p95_ms,
                    r.errors,
                    r.timeouts,
                )
                for r in session.scalars(query.order_by(s.received_at))
            ]

    def telemetry_windows(
        self, device_ids: list[str], *, since: float, until: float | None = None
    ) -> list[TelemetryWindow]:
        """Telemetry windows of ``device_ids`` received in ``[since, until)``."""
        t = TelemetryRow
        query = select(t).where(t.device_id.in_(device_ids), t.received_at >= since)
        if until is not None:
            query = query.where(t.received_at < until)
        with self._tx() as session:
            return [
                TelemetryWindow(
                    r.device_id,
                    r.received_at,
                    r.requests,
                    r.errors,
                    r.latency_p95_ms,
                    r.latency_count,
                )
                for r in session.scalars(query.order_by(t.received_at))
            ]
