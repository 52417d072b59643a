"""``/healthz`` (liveness), ``/readyz`` (database and broker reachable) and ``/metrics``.

The probes need no token: orchestrators call them without credentials. ``/metrics`` needs a
bearer token of any role (viewer, the lowest, is enough), because it tells the fleet's size,
versions and activity to whoever reaches the port; Prometheus sends one with
``authorization: {type: Bearer, credentials_file: ...}`` in the scrape config. Deployments
that protect the port otherwise opt out with the ``metrics_public`` setting
(``FEDGE_METRICS_PUBLIC``): :func:`build_router` with ``metrics_public=True`` serves
``/metrics`` without a token.

``/metrics`` refreshes the fleet gauges (``fedge_devices``, ``fedge_versions_in_field``)
from the store on each scrape.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.api.deps import HealthCheck, Resources, ResourcesDep, ViewerToken
from cloud.api.errors import problem_response, problem_responses
from cloud.api.schemas import CheckResult, Health, Readiness
from cloud.observability import DEVICES, REGISTRY, VERSIONS_IN_FIELD

__all__ = ["build_router", "refresh_fleet_gauges", "router"]

log = logging.getLogger(__name__)

#: The probes, the same whether ``/metrics`` is public or not; untagged, as
#: :func:`build_router`'s router tags them (tagging both would list "health" twice).
_probes = APIRouter()

REQUIRED_CHECKS = ("database", "broker")


@_probes.get("/healthz", name="health.live", response_model=Health, responses=problem_responses())
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


@_probes.get(
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


def _exposition(res: Resources) -> Response:
    try:
        refresh_fleet_gauges(res)
    except Exception:  # stale gauges beat a failed scrape
        log.exception("fleet gauges not refreshed")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def metrics(res: ResourcesDep, token: ViewerToken) -> Response:
    """Prometheus metrics of the coordinator (text exposition format); any role may scrape."""
    return _exposition(res)


def public_metrics(res: ResourcesDep) -> Response:
    """Prometheus metrics of the coordinator (text exposition format), without a token
    (``metrics_public``: the port is protected otherwise)."""
    return _exposition(res)


_EXPOSITION: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}
}


def build_router(*, metrics_public: bool = False) -> APIRouter:
    """The probes and ``/metrics``: behind a bearer token (any role), or open when
    ``metrics_public`` (:attr:`cloud.config.Settings.metrics_public`) is set.

    Two endpoint functions rather than one with an optional token: the token dependency
    of the protected one is what puts the ``bearer`` security requirement and the 401 into
    the OpenAPI document, and a public ``/metrics`` must show neither.
    """
    errors = problem_responses() if metrics_public else problem_responses(401)
    built = APIRouter(tags=["health"])
    built.include_router(_probes)
    built.add_api_route(
        "/metrics",
        public_metrics if metrics_public else metrics,
        methods=["GET"],
        name="metrics",
        response_class=Response,
        responses={**_EXPOSITION, **errors},
    )
    return built


#: The default routes: ``/metrics`` needs a token (``metrics_public`` off).
router = build_router()
