"""``/v1/deployments``: publish a version to devices in the background, follow progress.

``POST`` checks what it can up front (the version exists and has an approved TFLite
artifact; every target is enrolled and unrevoked), records a ``pending`` deployment and
hands it to :class:`~cloud.api.jobs.DeploymentJobs`; it answers 202 at once. The job's
progress and per-device outcomes are read with ``GET /v1/deployments/{id}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from cloud.api.deps import AuditDep, Audited, OperatorToken, ResourcesDep, ViewerToken
from cloud.api.errors import problem_responses
from cloud.api.jobs import JobsBusyError
from cloud.api.schemas import DeploymentIn, DeploymentOut, DeploymentPage
from cloud.deployment.publisher import select_devices
from cloud.fleet.records import DeploymentState

__all__ = ["router"]

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], dependencies=[Audited])

DeploymentId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


@router.post(
    "",
    name="deployments.create",
    status_code=202,
    response_model=DeploymentOut,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
def create_deployment(
    body: DeploymentIn,
    res: ResourcesDep,
    token: OperatorToken,
    audit: AuditDep,
    response: Response,
) -> DeploymentOut:
    """Start publishing a version to devices or a group (operator); 202 with the job."""
    info = res.registry.get_version(body.version)  # 404; resolves MODEL / MODEL@latest
    res.registry.deployable_artifact(info.ref)  # 409 not_deployable (rule P1)
    targets = select_devices(res.home, list(body.devices or []), body.group)
    device_ids = [t.device_id for t in targets]
    deployment = res.store.create_deployment(
        info.ref, device_ids, created_by=token.token_id, now=res.now()
    )
    audit.target = deployment.deployment_id
    audit.detail = {"version": info.ref, "devices": device_ids}
    try:
        res.jobs.submit(deployment)
    except JobsBusyError as exc:
        res.store.update_deployment(
            deployment.deployment_id,
            state=DeploymentState.CANCELLED,
            finished_at=res.now(),
            error=f"{exc.code}: {exc.message}",
        )
        raise
    response.headers["Location"] = f"/v1/deployments/{deployment.deployment_id}"
    return DeploymentOut.model_validate(deployment)


@router.get(
    "",
    name="deployments.list",
    response_model=DeploymentPage,
    responses=problem_responses(400, 401, 422),
)
def list_deployments(
    res: ResourcesDep,
    token: ViewerToken,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeploymentPage:
    """Deployments, newest first (viewer)."""
    page = res.store.list_deployments(cursor=cursor, limit=limit)
    return DeploymentPage(
        items=[DeploymentOut.model_validate(d) for d in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{deployment_id}",
    name="deployments.get",
    response_model=DeploymentOut,
    responses=problem_responses(401, 404, 422),
)
def get_deployment(
    deployment_id: DeploymentId, res: ResourcesDep, token: ViewerToken
) -> DeploymentOut:
    """One deployment with its per-device progress (viewer)."""
    return DeploymentOut.model_validate(res.store.get_deployment(deployment_id))
