"""``/v1/telemetry``: newest telemetry per device and fleet aggregates per model version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud.api.deps import ResourcesDep, ViewerToken
from cloud.api.errors import problem_responses
from cloud.api.schemas import (
    LatestTelemetry,
    LatestTelemetryPage,
    TelemetryAggregateOut,
    TelemetryAggregates,
    TelemetryOut,
)
from shared.identifiers import IDENTIFIER_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"])


@router.get(
    "/latest",
    name="telemetry.latest",
    response_model=LatestTelemetryPage,
    responses=problem_responses(400, 401, 404, 422),
)
def latest(
    res: ResourcesDep,
    token: ViewerToken,
    device_id: Annotated[
        str | None, Query(pattern=f"^{IDENTIFIER_PATTERN}$", max_length=64)
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> LatestTelemetryPage:
    """Newest telemetry of one device (``device_id``; 404 if unknown) or of every unrevoked
    device, a page at a time (viewer)."""
    if device_id is not None:
        res.store.get_device(device_id)
        devices, next_cursor = [device_id], None
    else:
        page = res.store.list_devices(cursor=cursor, limit=limit)
        devices, next_cursor = [d.device_id for d in page.items], page.next_cursor
    items = []
    for d in devices:
        record = res.store.latest_telemetry(d)
        items.append(
            LatestTelemetry(
                device_id=d, telemetry=TelemetryOut.model_validate(record) if record else None
            )
        )
    return LatestTelemetryPage(items=items, next_cursor=next_cursor)


@router.get(
    "/aggregates",
    name="telemetry.aggregates",
    response_model=TelemetryAggregates,
    responses=problem_responses(401, 422),
)
def aggregates(
    res: ResourcesDep,
    token: ViewerToken,
    window_s: Annotated[float, Query(gt=0, le=90 * 86400)] = 3600.0,
    model_version: Annotated[str | None, Query(max_length=200)] = None,
) -> TelemetryAggregates:
    """Requests, errors, error rate and latency percentiles per model version over the last
    ``window_s`` seconds (viewer)."""
    since = res.now() - window_s
    rows = res.store.telemetry_aggregates(since=since, model_version=model_version)
    return TelemetryAggregates(
        window_s=window_s,
        since=since,
        items=[TelemetryAggregateOut.model_validate(r) for r in rows],
    )
