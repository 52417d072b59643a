"""Fleet store: deployments with their per-device outcomes."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from cloud.fleet._base import (
    StoreBase,
    _decode_cursor,
    _deployment,
    _encode_cursor,
    _enum_arg,
    _limit,
)
from cloud.fleet.records import Deployment, DeploymentState, DeviceOutcome, Page
from cloud.fleet.schema import DeploymentDeviceRow, DeploymentRow
from shared.errors import ConfigError, NotFoundError
from shared.identifiers import IdentifierKind, check_identifier


class DeploymentsMixin(StoreBase):
    """Fleet store: deployments with their per-device outcomes (a ``FleetStore`` mixin)."""

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
        new_state = None if state is None else _enum_arg(DeploymentState, state, "deployment state")
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
                        variant=o.variant,
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
