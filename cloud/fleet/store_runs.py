"""Fleet store: federated runs and their rounds."""

from __future__ import annotations

import math
import re
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.fleet._base import StoreBase, _decode_cursor, _encode_cursor, _enum_arg, _fed_run, _limit
from cloud.fleet.records import FederationRound, FederationRun, FederationRunState, Page
from cloud.fleet.schema import FederationRoundRow, FederationRunRow
from shared.errors import ConfigError, NotFoundError, RegistryError

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _run_id(run_id: object) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"invalid run id {str(run_id)[:80]!r}", code="invalid_argument")
    return run_id


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class RunsMixin(StoreBase):
    """Fleet store: federated runs and their rounds (a ``FleetStore`` mixin)."""

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
        new_state = (
            None if state is None else _enum_arg(FederationRunState, state, "federated run state")
        )
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
