"""``/v1/federation``: federated runs as the registry records them (read-only).

A federated round registers a version with ``source=federated`` and
``source_ref=<run>/round-<n>`` (``cloud.federation.server``); runs are those versions
grouped by run. Starting a run from the API is not implemented (``fedge cloud federate``).
"""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import Audited, OperatorToken, ResourcesDep, ViewerToken
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.routes.models import aware
from cloud.api.schemas import FederationRound, FederationRun, FederationRuns
from cloud.registry import VersionSource
from shared.numbers import parse_ascii_uint

__all__ = ["router"]

router = APIRouter(prefix="/v1/federation", tags=["federation"], dependencies=[Audited])


def _round(source_ref: str) -> tuple[str, int | None]:
    run, sep, number = source_ref.rpartition("/round-")
    if not sep:
        return source_ref, None
    try:
        return run, parse_ascii_uint(number, what="round", max_value=2**31)
    except Exception:
        return source_ref, None


@router.get(
    "/runs",
    name="federation.runs",
    response_model=FederationRuns,
    responses=problem_responses(401),
)
def list_runs(res: ResourcesDep, token: ViewerToken) -> FederationRuns:
    """Federated runs and the version each round produced (viewer)."""
    runs: dict[tuple[str, str], list[FederationRound]] = {}
    for v in res.registry.list_versions():
        if v.source != VersionSource.FEDERATED:
            continue
        run_id, number = _round(v.source_ref or f"{v.model}-unnamed")
        runs.setdefault((run_id, v.model), []).append(
            FederationRound(
                round=number,
                ref=v.ref,
                parent=v.parent,
                metrics=v.metrics,
                created_at=aware(v.created_at),
            )
        )
    items = [
        FederationRun(run_id=run_id, model=model, rounds=rounds, latest=rounds[-1].ref)
        for (run_id, model), rounds in sorted(runs.items())
    ]
    return FederationRuns(items=items)


@router.post(
    "/runs",
    name="federation.start",
    status_code=501,
    response_model=None,
    responses=problem_responses(401, 403, 501),
)
def start_run(token: OperatorToken) -> None:
    """Not implemented: start runs with ``fedge cloud federate`` (always a 501 problem)."""
    raise ApiProblem(
        501,
        "not_implemented",
        "starting a federated run from the API is not implemented; use `fedge cloud federate`",
    )
