"""Fleet store: deployments with their per-device outcomes.

A deployment job records its runner (the instance id of the serve process running it) and
a heartbeat the runner refreshes while the job is queued or running
(:meth:`DeploymentsMixin.touch_deployments`); crash recovery fails only the open
deployments whose heartbeat is stale (:meth:`DeploymentsMixin.stale_deployments`,
:meth:`DeploymentsMixin.fail_stale_deployment`), so a process starting beside a live one
does not fail the jobs that one is running.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, or_, select, update
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

#: The states of a deployment whose job has not ended.
_OPEN = (DeploymentState.PENDING.value, DeploymentState.RUNNING.value)


def _record(row: DeploymentRow, outcomes: Sequence[DeploymentDeviceRow]) -> Deployment:
    """The record of a row, with its runner and heartbeat (0007)."""
    return dataclasses.replace(
        _deployment(row, outcomes), runner=row.runner, heartbeat_at=row.heartbeat_at
    )


def _stale(cutoff: float) -> ColumnElement[bool]:
    """Open, and its runner has not beaten since ``cutoff``: a heartbeat older than that,
    or none at all while ``running`` (a row from before 0007) or ``pending`` since before
    it (created, never handed to a job: the process died in between)."""
    d = DeploymentRow
    return and_(
        d.state.in_(_OPEN),
        or_(
            d.heartbeat_at < cutoff,
            and_(
                d.heartbeat_at.is_(None),
                or_(d.state == DeploymentState.RUNNING.value, d.created_at < cutoff),
            ),
        ),
    )


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
            return _record(row, outcomes)

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
        runner: str | None = None,
        heartbeat_at: float | None = None,
    ) -> Deployment:
        """Progress of a deployment (outcomes replace those of the same devices); ``runner``
        and ``heartbeat_at`` say which process runs the job and when it last did."""
        new_state = None if state is None else _enum_arg(DeploymentState, state, "deployment state")
        with self._tx() as session:
            row = self._deployment_row(session, deployment_id)
            if new_state is not None:
                row.state = new_state.value
            if finished_at is not None:
                row.finished_at = float(finished_at)
            if error is not None:
                row.error = error[:2000]
            elif new_state is DeploymentState.SUCCEEDED:
                # A success has no error: not even an "interrupted" one that a sweep wrote
                # while this job's heartbeat had stalled (the job's own end wins).
                row.error = None
            if bytes_sent is not None:
                row.bytes_sent = int(bytes_sent)
            if runner is not None:
                row.runner = runner[:200]
            if heartbeat_at is not None:
                row.heartbeat_at = float(heartbeat_at)
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
            return _record(row, self._outcomes(session, [row.deployment_id])[row.deployment_id])

    def get_deployment(self, deployment_id: str) -> Deployment:
        """One deployment with its per-device outcomes."""
        with self._tx() as session:
            row = self._deployment_row(session, deployment_id)
            return _record(row, self._outcomes(session, [row.deployment_id])[row.deployment_id])

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
            items = [_record(r, outcomes[r.deployment_id]) for r in rows]
        last = rows[-1] if rows else None
        next_cursor = _encode_cursor(last.created_at, last.deployment_id) if more and last else None
        return Page(items=items, next_cursor=next_cursor)

    def touch_deployments(self, deployment_ids: Sequence[str], *, runner: str, now: float) -> int:
        """Refresh the heartbeat of ``runner``'s open deployments among ``deployment_ids``,
        in one ``UPDATE``; returns how many rows it touched. A deployment that has ended, or
        that another runner holds, is left as it is."""
        ids = [i for i in deployment_ids if isinstance(i, str)]
        if not ids:
            return 0
        d = DeploymentRow
        query = (
            update(d)
            .where(d.deployment_id.in_(ids), d.runner == runner, d.state.in_(_OPEN))
            .values(heartbeat_at=float(now))
            .execution_options(synchronize_session=False)
        )
        with self._tx() as session:
            result = session.execute(query)
            return max(getattr(result, "rowcount", 0), 0)

    def stale_deployments(self, *, cutoff: float) -> list[Deployment]:
        """Open deployments whose runner has not beaten since ``cutoff`` (Unix seconds):
        a heartbeat older than that, or none while ``running`` or ``pending`` since before
        ``cutoff``; oldest first."""
        d = DeploymentRow
        query = select(d).where(_stale(cutoff)).order_by(d.created_at, d.deployment_id)
        with self._tx() as session:
            rows = list(session.scalars(query))
            outcomes = self._outcomes(session, [r.deployment_id for r in rows])
            return [_record(r, outcomes[r.deployment_id]) for r in rows]

    def fail_stale_deployment(
        self, deployment_id: str, *, cutoff: float, now: float, error: str
    ) -> bool:
        """Mark a deployment ``failed`` with ``error`` if it is still stale (see
        :meth:`stale_deployments`); False if it is not: it ended, or its runner beat since
        it was read (a conditional ``UPDATE``, so two sweeping processes, or a sweep and a
        heartbeat, cannot both win)."""
        d = DeploymentRow
        query = (
            update(d)
            .where(d.deployment_id == deployment_id, _stale(cutoff))
            .values(state=DeploymentState.FAILED.value, finished_at=float(now), error=error[:2000])
            .execution_options(synchronize_session=False)
        )
        with self._tx() as session:
            result = session.execute(query)
            return bool(getattr(result, "rowcount", 0))
