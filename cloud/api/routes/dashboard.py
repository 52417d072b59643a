"""The operator dashboard: the page at ``/``, its static files, and ``/v1/dashboard/summary``.

The page and its files carry no data and need no token (the data is behind the ``/v1`` API,
read with the operator's bearer token); they are left out of the OpenAPI document. The
summary aggregates in SQL (:class:`cloud.fleet.store_dashboard.DashboardMixin`), so its cost
does not grow with a per-row Python loop over the fleet.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Response
from starlette.concurrency import run_in_threadpool

from cloud.api.dashboard import SECURITY_HEADERS, STATIC_DIR, STATIC_FILES
from cloud.api.dashboard.schemas import (
    DashboardSummary,
    FleetSummaryOut,
    LatencyVersionOut,
)
from cloud.api.deps import ResourcesDep, ViewerToken
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.routes import events
from cloud.fleet.store_dashboard import LATENCY_BUCKETS_MS

__all__ = ["include_dashboard", "page_router", "router"]

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])
page_router = APIRouter(include_in_schema=False)

#: Static files change only with a release; the page itself is always revalidated.
_CACHE = {"Cache-Control": "no-cache"}


def _file(name: str) -> Response:
    media = STATIC_FILES.get(name)
    if media is None:
        raise ApiProblem(404, "not_found", "no such dashboard file")
    body = (STATIC_DIR / name).read_bytes()
    return Response(body, media_type=media, headers={**SECURITY_HEADERS, **_CACHE})


@page_router.get("/", name="dashboard.page")
def page() -> Response:
    """The dashboard (HTML; the data is fetched with the operator's token)."""
    return _file("index.html")


@page_router.get("/dashboard/static/{name:path}", name="dashboard.static")
def static(name: str) -> Response:
    """One of the dashboard's own files (a fixed list: nothing else on disk is reachable)."""
    return _file(name)


@router.get(
    "/summary",
    name="dashboard.summary",
    response_model=DashboardSummary,
    responses=problem_responses(401, 422),
)
async def summary(
    res: ResourcesDep,
    token: ViewerToken,
    window_s: Annotated[float, Query(gt=0, le=90 * 86400)] = 3600.0,
) -> DashboardSummary:
    """Fleet totals by profile, version and state, and latency per model version over the
    last ``window_s`` seconds (viewer)."""
    now = res.now()
    since = now - window_s
    store = res.store
    fleet = await run_in_threadpool(store.fleet_summary)
    aggregates = await run_in_threadpool(lambda: store.telemetry_aggregates(since=since))
    histograms = {
        h.model_version: h.counts
        for h in await run_in_threadpool(lambda: store.latency_histograms(since=since))
    }
    empty = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    return DashboardSummary(
        generated_at=now,
        window_s=window_s,
        fleet=FleetSummaryOut.model_validate(fleet),
        bucket_edges_ms=list(LATENCY_BUCKETS_MS),
        latency=[
            LatencyVersionOut(
                model_version=a.model_version,
                devices=a.devices,
                requests=a.requests,
                errors=a.errors,
                latency_p50_ms=a.latency_p50_ms,
                latency_p95_ms=a.latency_p95_ms,
                latency_p99_ms=a.latency_p99_ms,
                histogram=histograms.get(a.model_version, empty),
            )
            for a in aggregates
        ],
    )


def include_dashboard(app: FastAPI) -> None:
    """Serve the dashboard: its page and files, ``/v1/dashboard`` and ``/v1/events``."""
    app.include_router(router)
    app.include_router(events.router)
    app.include_router(page_router)
