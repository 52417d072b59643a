"""``/healthz`` (liveness), ``/readyz`` (database and broker reachable) and ``/metrics``.

None of them needs a token: probes and Prometheus scrape them. ``/metrics`` refreshes the
fleet gauges (``fedge_devices``, ``fedge_versions_in_field``) from the store on each scrape.
"""

from __future__ import annotations

import logging
from collections import Counter

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.api.deps import HealthCheck, Resources, ResourcesDep
from cloud.api.errors import problem_response, problem_responses
from cloud.api.schemas import CheckResult, Health, Readiness
from cloud.observability import DEVICES, REGISTRY, VERSIONS_IN_FIELD

__all__ = ["refresh_fleet_gauges", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

REQUIRED_CHECKS = ("database", "broker")


@router.get("/healthz", name="health.live", response_model=Health, responses=problem_responses())
def healthz() -> Health:
    """The process is up and serving."""
    return Health()


def _run(check: HealthCheck | None) -> CheckResult:
    if check is None:
        return CheckResult(ok=False, detail="no check configured")
    try:
        ok, detail = check()
    except Exception as exc:  # a check that raises is a failing check
        return CheckResult(ok=False, detail=f"{exc.__class__.__name__}: {exc}")
    return CheckResult(ok=bool(ok), detail=str(detail))


@router.get(
    "/readyz",
    name="health.ready",
    response_model=Readiness,
    responses=problem_responses(503),
)
def readyz(request: Request) -> Response:
    """200 when the database and the broker checks pass, else a 503 problem with each
    check's result (``checks``)."""
    resources = getattr(request.app.state, "resources", None)
    if not isinstance(resources, Resources):
        return problem_response(
            503, "not_ready", "the coordinator is starting or stopping", request.url.path
        )
    names = dict.fromkeys([*REQUIRED_CHECKS, *resources.health])
    checks = {name: _run(resources.health.get(name)) for name in names}
    if all(c.ok for c in checks.values()):
        return JSONResponse(Readiness(checks=checks).model_dump())
    failing = ", ".join(n for n, c in checks.items() if not c.ok)
    return problem_response(
        503,
        "not_ready",
        f"not ready: {failing}",
        request.url.path,
        extra={"checks": {n: c.model_dump() for n, c in checks.items()}},
    )


def refresh_fleet_gauges(resources: Resources) -> None:
    """Set ``fedge_devices`` and ``fedge_versions_in_field`` from the fleet store."""
    online: Counter[str] = Counter()
    versions: Counter[tuple[str, str]] = Counter()
    cursor: str | None = None
    while True:
        page = resources.store.list_devices(cursor=cursor, limit=500)
        for device in page.items:
            online["unknown" if device.online is None else str(device.online).lower()] += 1
            serving = device.serving or {}
            if serving.get("model_id") is not None and serving.get("version") is not None:
                versions[(str(serving["model_id"]), str(serving["version"]))] += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    DEVICES.clear()
    for state in ("true", "false", "unknown"):
        DEVICES.labels(state).set(online[state])
    VERSIONS_IN_FIELD.clear()
    for (model, version), count in versions.items():
        VERSIONS_IN_FIELD.labels(model, version).set(count)


@router.get(
    "/metrics",
    name="metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format.", "content": {"text/plain": {}}},
        **problem_responses(),
    },
)
def metrics(res: ResourcesDep) -> Response:
    """Prometheus metrics of the coordinator (text exposition format)."""
    try:
        refresh_fleet_gauges(res)
    except Exception:  # stale gauges beat a failed scrape
        log.exception("fleet gauges not refreshed")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
