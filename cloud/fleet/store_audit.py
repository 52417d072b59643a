"""Fleet store: the audit log."""

from __future__ import annotations

from sqlalchemy import and_, or_, select

from cloud.fleet._base import StoreBase, _audit, _decode_cursor, _encode_cursor, _limit
from cloud.fleet.records import AuditEntry, Page
from cloud.fleet.schema import AuditRow
from shared.errors import ConfigError


class AuditMixin(StoreBase):
    """Fleet store: the audit log (a ``FleetStore`` mixin)."""

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
