"""Fleet store: staged rollouts (state, cohorts, per-device progress, timeline, named
policies) and the shadow evidence the gates read (a ``FleetStore`` mixin; tables in
:mod:`cloud.fleet.schema_rollouts`).

Concurrency: the leader's engine is the only writer of a rollout's state, cohorts and
devices; the API writes only ``control`` (:meth:`RolloutsMixin.request_rollout_control`,
a compare-and-set on the state) and the engine clears it with another compare-and-set, so
an operator's request is never lost to an engine write and never applied twice.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from cloud.fleet._base import _decode_cursor, _encode_cursor, _limit
from cloud.fleet.records import Page
from cloud.fleet.schema_rollouts import (
    RolloutCohortRow,
    RolloutDeviceRow,
    RolloutEventRow,
    RolloutRow,
)
from cloud.fleet.store_rollout_evidence import RolloutEvidenceMixin
from cloud.rollout.gates import DeviceProgress
from cloud.rollout.records import (
    CohortRecord,
    Phase,
    Rollout,
    RolloutControl,
    RolloutDevice,
    RolloutEvent,
    RolloutState,
)
from shared.errors import ConfigError, NotFoundError
from shared.identifiers import IdentifierKind, check_identifier

__all__ = ["RolloutsMixin"]

#: Rollout fields the engine may set with :meth:`RolloutsMixin.update_rollout`.
_ENGINE_FIELDS = frozenset(
    {
        "state",
        "phase",
        "cohort",
        "phase_started_at",
        "approved_cohort",
        "finished_at",
        "reason",
        "rollback_scope",
    }
)
_COHORT_FIELDS = frozenset({"state", "started_at", "installed_at", "finished_at"})
_ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.AWAITING_APPROVAL)


def _rollout(
    row: RolloutRow, cohorts: list[RolloutCohortRow], devices: list[RolloutDeviceRow]
) -> Rollout:
    return Rollout(
        rollout_id=row.rollout_id,
        name=row.name,
        version_ref=row.version_ref,
        policy_name=row.policy_name,
        policy=dict(row.policy),
        state=RolloutState(row.state),
        phase=Phase(row.phase),
        cohort=row.cohort,
        phase_started_at=row.phase_started_at,
        control=row.control,
        approved_cohort=row.approved_cohort,
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        reason=row.reason,
        rollback_scope=row.rollback_scope,
        source=row.source,
        cohorts=[
            CohortRecord(c.index, c.state, c.size, c.started_at, c.installed_at, c.finished_at)
            for c in sorted(cohorts, key=lambda c: c.index)
        ],
        devices=[
            RolloutDevice(d.device_id, d.cohort, d.state, d.reason, d.sends, d.updated_at)
            for d in sorted(devices, key=lambda d: (d.cohort, d.device_id))
        ],
    )


class RolloutsMixin(RolloutEvidenceMixin):
    """Fleet store: staged rollouts (and, inherited, named policies and evidence)."""

    # -- rollouts -------------------------------------------------------------------------

    def create_rollout(
        self,
        version_ref: str,
        policy: dict[str, Any],
        cohorts: list[list[str]],
        *,
        created_by: str,
        now: float,
        rollout_id: str | None = None,
        name: str | None = None,
        policy_name: str | None = None,
        source: str | None = None,
    ) -> Rollout:
        """A ``running`` rollout at cohort 0 with every device ``pending``."""
        rid = rollout_id or uuid.uuid4().hex
        check_identifier(rid, IdentifierKind.DEVICE)  # the same id grammar
        row = RolloutRow(
            rollout_id=rid,
            name=name,
            version_ref=version_ref,
            policy_name=policy_name,
            policy=policy,
            state=RolloutState.RUNNING.value,
            phase=Phase.START.value,
            cohort=0,
            phase_started_at=float(now),
            control=None,
            approved_cohort=0,
            created_at=float(now),
            created_by=created_by,
            updated_at=float(now),
            source=source,
        )
        crows = [
            RolloutCohortRow(rollout_id=rid, index=i, state="pending", size=len(members))
            for i, members in enumerate(cohorts)
        ]
        drows = [
            RolloutDeviceRow(
                rollout_id=rid,
                device_id=check_identifier(d, IdentifierKind.DEVICE),
                cohort=i,
                state=DeviceProgress.PENDING.value,
                sends=0,
                updated_at=float(now),
            )
            for i, members in enumerate(cohorts)
            for d in members
        ]
        with self._tx() as session:
            session.add(row)
            session.flush()
            session.add_all([*crows, *drows])
            session.add(
                RolloutEventRow(
                    rollout_id=rid,
                    at=float(now),
                    kind="created",
                    cohort=None,
                    detail={"version": version_ref, "cohorts": [len(c) for c in cohorts]},
                )
            )
            session.flush()
            return _rollout(row, crows, drows)

    @staticmethod
    def _rollout_row(session: Session, rollout_id: str) -> RolloutRow:
        row = session.get(RolloutRow, rollout_id) if isinstance(rollout_id, str) else None
        if row is None:
            raise NotFoundError(f"unknown rollout {str(rollout_id)[:80]!r}")
        return row

    @staticmethod
    def _load(session: Session, row: RolloutRow, *, devices: bool) -> Rollout:
        rid = row.rollout_id
        crows = list(
            session.scalars(select(RolloutCohortRow).where(RolloutCohortRow.rollout_id == rid))
        )
        drows = (
            list(
                session.scalars(select(RolloutDeviceRow).where(RolloutDeviceRow.rollout_id == rid))
            )
            if devices
            else []
        )
        return _rollout(row, crows, drows)

    def get_rollout(self, rollout_id: str, *, devices: bool = True) -> Rollout:
        """One rollout with its cohorts (and its devices unless ``devices=False``)."""
        with self._tx() as session:
            return self._load(session, self._rollout_row(session, rollout_id), devices=devices)

    def list_rollouts(
        self, *, state: RolloutState | None = None, cursor: str | None = None, limit: int = 50
    ) -> Page[Rollout]:
        """Newest first (by ``created_at``, then id), without their devices."""
        size = _limit(limit)
        r = RolloutRow
        query = select(r)
        if state is not None:
            query = query.where(r.state == RolloutState(state).value)
        if cursor is not None:
            at, key = _decode_cursor(cursor)
            query = query.where(
                or_(r.created_at < at, and_(r.created_at == at, r.rollout_id < key))
            )
        query = query.order_by(r.created_at.desc(), r.rollout_id.desc()).limit(size + 1)
        with self._tx() as session:
            rows = list(session.scalars(query))
            more = len(rows) > size
            rows = rows[:size]
            items = [self._load(session, row, devices=False) for row in rows]
        last = rows[-1] if rows else None
        next_cursor = _encode_cursor(last.created_at, last.rollout_id) if more and last else None
        return Page(items=items, next_cursor=next_cursor)

    def rollout_counts(self, rollout_ids: list[str]) -> dict[str, dict[str, int]]:
        """Devices per progress state of each rollout (one grouped query)."""
        out: dict[str, dict[str, int]] = {r: {} for r in rollout_ids}
        if not rollout_ids:
            return out
        d = RolloutDeviceRow
        query = (
            select(d.rollout_id, d.state, func.count())
            .where(d.rollout_id.in_(rollout_ids))
            .group_by(d.rollout_id, d.state)
        )
        with self._tx() as session:
            for rid, state, n in session.execute(query):
                out[rid][state] = int(n)
        return out

    def rollout_by_source(self, source: str) -> Rollout | None:
        """The rollout started for ``source`` (e.g. ``federation:<run_id>``), if any."""
        with self._tx() as session:
            row = session.scalars(
                select(RolloutRow).where(RolloutRow.source == source).limit(1)
            ).first()
            return None if row is None else self._load(session, row, devices=False)

    def active_rollout_ids(self) -> list[str]:
        """Rollouts the engine still steps (not final, or final with a control pending),
        oldest first."""
        r = RolloutRow
        query = (
            select(r.rollout_id)
            .where(or_(r.state.in_([s.value for s in _ACTIVE]), r.control.is_not(None)))
            .order_by(r.created_at, r.rollout_id)
        )
        with self._tx() as session:
            return list(session.scalars(query))

    def update_rollout(self, rollout_id: str, *, now: float, **fields: Any) -> None:
        """Set engine-owned fields of a rollout (never ``control``)."""
        unknown = set(fields) - _ENGINE_FIELDS
        if unknown:
            raise ConfigError(f"not rollout fields: {sorted(unknown)}", code="invalid_argument")
        values = {
            k: (v.value if isinstance(v, RolloutState | Phase) else v) for k, v in fields.items()
        }
        with self._tx() as session:
            row = self._rollout_row(session, rollout_id)
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = float(now)

    def request_rollout_control(
        self,
        rollout_id: str,
        action: RolloutControl,
        *,
        allowed: set[RolloutState] | frozenset[RolloutState],
    ) -> Rollout:
        """Ask the engine for ``action`` if the rollout's state allows it (compare-and-set).

        Raises:
            NotFoundError: unknown rollout.
            ConfigError: code ``invalid_state`` — the state does not allow it, or another
                request is still pending.
        """
        with self._tx() as session:
            row = self._rollout_row(session, rollout_id)
            state = RolloutState(row.state)
            if state not in allowed:
                raise ConfigError(
                    f"rollout {rollout_id} is {state}: cannot {action}", code="invalid_state"
                )
            if row.control is not None and row.control != action.value:
                raise ConfigError(
                    f"rollout {rollout_id} has a pending {row.control} request",
                    code="invalid_state",
                )
            row.control = action.value
            session.flush()
            return self._load(session, row, devices=False)

    def take_rollout_control(self, rollout_id: str, action: str) -> bool:
        """Clear the pending ``action`` (True if it was still pending: apply it once)."""
        with self._tx() as session:
            result = session.execute(
                update(RolloutRow)
                .where(RolloutRow.rollout_id == rollout_id, RolloutRow.control == action)
                .values(control=None)
            )
            return bool(getattr(result, "rowcount", 0))

    def update_cohort(self, rollout_id: str, index: int, **fields: Any) -> None:
        """Set fields of one cohort (``state``, ``started_at``, ``installed_at``,
        ``finished_at``)."""
        unknown = set(fields) - _COHORT_FIELDS
        if unknown:
            raise ConfigError(f"not cohort fields: {sorted(unknown)}", code="invalid_argument")
        with self._tx() as session:
            row = session.get(RolloutCohortRow, (rollout_id, index))
            if row is None:
                raise NotFoundError(f"rollout {rollout_id} has no cohort {index}")
            for k, v in fields.items():
                setattr(row, k, v)

    def set_device_progress(
        self,
        rollout_id: str,
        updates: dict[str, tuple[DeviceProgress, str | None]],
        *,
        now: float,
        sent: bool = False,
    ) -> None:
        """Record devices' progress; ``sent=True`` also counts one more manifest sent."""
        if not updates:
            return
        with self._tx() as session:
            rows = session.scalars(
                select(RolloutDeviceRow).where(
                    RolloutDeviceRow.rollout_id == rollout_id,
                    RolloutDeviceRow.device_id.in_(list(updates)),
                )
            )
            for row in rows:
                state, reason = updates[row.device_id]
                row.state = DeviceProgress(state).value
                row.reason = None if reason is None else reason[:200]
                row.updated_at = float(now)
                if sent:
                    row.sends += 1

    # -- timeline -------------------------------------------------------------------------

    def add_rollout_event(
        self,
        rollout_id: str,
        kind: str,
        *,
        now: float,
        cohort: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one event to the rollout's timeline."""
        with self._tx() as session:
            session.add(
                RolloutEventRow(
                    rollout_id=rollout_id,
                    at=float(now),
                    kind=kind[:40],
                    cohort=cohort,
                    detail=detail,
                )
            )

    def list_rollout_events(
        self, rollout_id: str, *, after: int | None = None, limit: int = 200
    ) -> list[RolloutEvent]:
        """The timeline, oldest first, after event id ``after``."""
        size = _limit(limit)
        e = RolloutEventRow
        query = select(e).where(e.rollout_id == rollout_id)
        if after is not None:
            query = query.where(e.id > int(after))
        with self._tx() as session:
            self._rollout_row(session, rollout_id)
            rows = session.scalars(query.order_by(e.id).limit(size))
            return [
                RolloutEvent(r.id, r.rollout_id, r.at, r.kind, r.cohort, r.detail) for r in rows
            ]
