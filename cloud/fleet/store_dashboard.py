"""Fleet store: the dashboard's summaries, aggregated in SQL (a ``FleetStore`` mixin).

The dashboard must stay fast with thousands of devices, so nothing here loads every row
into Python: each summary is a handful of ``GROUP BY`` / aggregate statements (identical SQL
on SQLite and PostgreSQL), and the change feed behind the event stream asks only for the
devices whose server-side times moved past a watermark.

``last_seen``, ``enrolled_at`` and ``revoked_at`` are coordinator times (receive time,
enrollment, revocation), so a watermark on them is monotonic even when device clocks are
not; ``last_status_at`` is the device's ``sent_at`` and is never used as a cursor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Float, case, cast, func, or_, select

from cloud.fleet._base import StoreBase, _device, _limit
from cloud.fleet.records import Device
from cloud.fleet.schema import (
    ApiTokenRow,
    DeviceRow,
    FederationRoundRow,
    FederationRunRow,
    TelemetryRow,
)

__all__ = [
    "LATENCY_BUCKETS_MS",
    "CountByKey",
    "DashboardMixin",
    "FleetSummary",
    "FleetWatermark",
    "LatencyHistogram",
]

#: Upper edges (ms) of the latency histogram's buckets; a last bucket holds the rest.
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class CountByKey:
    """How many unrevoked devices share one value (a profile, a version, a state)."""

    key: str | None
    devices: int
    online: int


@dataclass(frozen=True)
class FleetSummary:
    """The fleet at a glance: totals and breakdowns of the unrevoked devices."""

    devices: int
    online: int
    offline: int
    never_reported: int
    revoked: int
    last_seen: float | None
    profiles: list[CountByKey] = field(default_factory=list)
    versions: list[CountByKey] = field(default_factory=list)
    states: list[CountByKey] = field(default_factory=list)


@dataclass(frozen=True)
class FleetWatermark:
    """What changes whenever a device (or a run) changes: compared, never interpreted."""

    devices: int
    last_seen: float | None
    enrolled_at: float | None
    revoked_at: float | None
    runs: int
    rounds: int
    run_changed_at: float | None
    active_runs: int

    @property
    def device_time(self) -> float:
        """The newest coordinator time of any device change (0 when there is none)."""
        times = (self.last_seen, self.enrolled_at, self.revoked_at)
        return max((t for t in times if t is not None), default=0.0)


@dataclass(frozen=True)
class LatencyHistogram:
    """Telemetry windows of one model version by their p50 latency, weighted by requests.

    ``counts[i]`` is the number of requests served in windows whose p50 was at most
    ``LATENCY_BUCKETS_MS[i]`` (and above the previous edge); the last count is the rest.
    """

    model_version: str | None
    counts: list[int]
    windows: int


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


class DashboardMixin(StoreBase):
    """Fleet store: aggregates for the operator dashboard (a ``FleetStore`` mixin)."""

    def fleet_summary(self) -> FleetSummary:
        """Totals and per-profile / per-version / per-state counts, in SQL."""
        d = DeviceRow
        live = d.revoked_at.is_(None)
        online = func.coalesce(func.sum(case((d.online.is_(True), 1), else_=0)), 0)
        with self._tx() as session:
            total, on, never, last_seen = session.execute(
                select(
                    func.count(),
                    online,
                    func.coalesce(func.sum(case((d.online.is_(None), 1), else_=0)), 0),
                    func.max(d.last_seen),
                ).where(live)
            ).one()
            revoked = session.scalar(select(func.count()).where(d.revoked_at.is_not(None)))
            groups: list[list[CountByKey]] = []
            for column in (d.profile, d.model_version, d.state):
                rows = session.execute(
                    select(column, func.count(), online).where(live).group_by(column)
                ).all()
                groups.append(
                    sorted(
                        (CountByKey(k, int(n), int(o)) for k, n, o in rows),
                        key=lambda c: (-c.devices, c.key or ""),
                    )
                )
        total, on, never = int(total), int(on), int(never)
        return FleetSummary(
            devices=total,
            online=on,
            offline=total - on - never,
            never_reported=never,
            revoked=int(revoked or 0),
            last_seen=_float(last_seen),
            profiles=groups[0],
            versions=groups[1],
            states=groups[2],
        )

    def fleet_watermark(self) -> FleetWatermark:
        """One aggregate per table; equal watermarks mean nothing the dashboard shows changed."""
        d, r = DeviceRow, FederationRunRow
        active = ("pending", "running", "stopping")
        with self._tx() as session:
            devices, seen, enrolled, revoked = session.execute(
                select(
                    func.count(),
                    func.max(d.last_seen),
                    func.max(d.enrolled_at),
                    func.max(d.revoked_at),
                )
            ).one()
            runs, changed, running = session.execute(
                select(
                    func.count(),
                    func.max(func.coalesce(r.finished_at, r.started_at, r.created_at)),
                    func.coalesce(func.sum(case((r.state.in_(active), 1), else_=0)), 0),
                )
            ).one()
            rounds = session.scalar(select(func.count()).select_from(FederationRoundRow))
        return FleetWatermark(
            devices=int(devices),
            last_seen=_float(seen),
            enrolled_at=_float(enrolled),
            revoked_at=_float(revoked),
            runs=int(runs),
            rounds=int(rounds or 0),
            run_changed_at=_float(changed),
            active_runs=int(running),
        )

    def devices_changed_since(self, since: float, *, limit: int = 200) -> list[Device]:
        """Devices seen, enrolled or revoked after ``since`` (coordinator time), newest
        first, at most ``limit`` (the caller refetches the page if there were more)."""
        d = DeviceRow
        at = float(since)
        query = (
            select(d)
            .where(or_(d.last_seen > at, d.enrolled_at > at, d.revoked_at > at))
            .order_by(d.last_seen.desc(), d.id)
            .limit(_limit(limit))
        )
        with self._tx() as session:
            return [_device(row) for row in session.scalars(query)]

    def latency_histograms(self, *, since: float) -> list[LatencyHistogram]:
        """Per model version, requests by their window's p50 latency bucket, in SQL."""
        t = TelemetryRow
        p50 = cast(t.latency_p50_ms, Float)
        bucket = case(
            *((p50 <= edge, index) for index, edge in enumerate(LATENCY_BUCKETS_MS)),
            else_=len(LATENCY_BUCKETS_MS),
        ).label("bucket")
        query = (
            select(t.model_version, bucket, func.sum(t.requests), func.count())
            .where(t.received_at >= float(since), t.latency_count > 0)
            .group_by(t.model_version, bucket)
        )
        with self._tx() as session:
            rows = session.execute(query).all()
        by_version: dict[str | None, tuple[list[int], list[int]]] = {}
        for version, index, requests, windows in rows:
            counts, seen = by_version.setdefault(
                version, ([0] * (len(LATENCY_BUCKETS_MS) + 1), [0])
            )
            counts[int(index)] += int(requests or 0)
            seen[0] += int(windows)
        return [
            LatencyHistogram(model_version=v, counts=c, windows=w[0])
            for v, (c, w) in sorted(by_version.items(), key=lambda i: (i[0] is None, i[0] or ""))
        ]

    def api_token_active(self, token_id: str) -> bool:
        """Whether the API token exists and is not revoked (the event stream re-checks)."""
        with self._tx() as session:
            revoked = session.execute(
                select(ApiTokenRow.revoked_at).where(ApiTokenRow.token_id == token_id)
            ).first()
        return revoked is not None and revoked[0] is None
