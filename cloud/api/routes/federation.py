"""``/v1/federation``: start federated runs, follow their per-round metrics, stop them.

``POST /v1/federation/runs`` builds the plan exactly as ``fedge cloud federate`` does (same
option names; ``fedge cloud federate --api URL`` sends them), records a ``pending`` run and
starts it in the background (:class:`~cloud.api.federation_jobs.FederationJobs`); it answers
202 at once, or 409 ``run_in_progress`` while another run is in progress (one at a time).
Each round is stored as it finishes (``GET /v1/federation/runs/{id}``); every round's model
is also a registry version (``source=federated``, ``source_ref=<run>/round-<n>``).

``POST …/{id}/stop`` ends a run after its current round (Flower cannot interrupt a round):
the run is ``stopping`` until then, ``stopped`` afterwards, its finished rounds kept.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from cloud.api.deps import (
    AuditDep,
    Audited,
    FederationDep,
    OperatorToken,
    ResourcesDep,
    ViewerToken,
)
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.federation_jobs import RunInProgressError, RunNotActiveError
from cloud.api.schemas import FederationRunIn, FederationRunOut, FederationRunPage

__all__ = ["router"]

router = APIRouter(prefix="/v1/federation", tags=["federation"], dependencies=[Audited])

RunId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


@router.post(
    "/runs",
    name="federation.start",
    status_code=202,
    response_model=FederationRunOut,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
def start_run(
    body: FederationRunIn,
    jobs: FederationDep,
    token: OperatorToken,
    audit: AuditDep,
    response: Response,
) -> FederationRunOut:
    """Start a federated run (operator); 202 with the ``pending`` run.

    409 ``run_in_progress`` while another run is in progress; 404 for an unknown ``init``
    version or device; 400 for an inconsistent plan (e.g. SecAgg+ with a robust strategy).
    """
    audit.detail = {
        "engine": body.engine,
        "strategy": body.strategy,
        "rounds": body.rounds,
        "clients": body.clients,
        "devices": body.devices,
        "secagg": body.secagg,
        "data": body.data,
        "init": body.init,
    }
    try:
        run = jobs.start(body, created_by=token.token_id)
    except RunInProgressError as exc:
        raise ApiProblem(409, exc.code, exc.message, extra={"run_id": exc.run_id}) from exc
    audit.target = run.run_id
    response.headers["Location"] = f"/v1/federation/runs/{run.run_id}"
    return FederationRunOut.model_validate(run)


@router.get(
    "/runs",
    name="federation.runs",
    response_model=FederationRunPage,
    responses=problem_responses(400, 401, 422),
)
def list_runs(
    res: ResourcesDep,
    token: ViewerToken,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> FederationRunPage:
    """Federated runs with their per-round metrics, newest first (viewer)."""
    page = res.store.list_runs(cursor=cursor, limit=limit)
    return FederationRunPage(
        items=[FederationRunOut.model_validate(r) for r in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/runs/{run_id}",
    name="federation.get",
    response_model=FederationRunOut,
    responses=problem_responses(401, 404, 422),
)
def get_run(run_id: RunId, res: ResourcesDep, token: ViewerToken) -> FederationRunOut:
    """One federated run with its per-round metrics (viewer)."""
    return FederationRunOut.model_validate(res.store.get_run(run_id))


@router.post(
    "/runs/{run_id}/stop",
    name="federation.stop",
    response_model=FederationRunOut,
    responses=problem_responses(401, 403, 404, 409, 422),
)
def stop_run(
    run_id: RunId, jobs: FederationDep, token: OperatorToken, audit: AuditDep
) -> FederationRunOut:
    """Stop a run after its current round (operator): ``stopping``, then ``stopped`` with
    the finished rounds kept. 409 ``run_finished`` if it has already ended."""
    try:
        run = jobs.stop(run_id)
    except RunNotActiveError as exc:
        raise ApiProblem(409, exc.code, exc.message) from exc
    audit.detail = {"state": str(run.state)}
    return FederationRunOut.model_validate(run)
