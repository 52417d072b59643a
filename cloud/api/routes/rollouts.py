"""``/v1/rollouts``: staged rollouts gated on field evidence; ``/v1/rollout-policies``.

``POST /v1/rollouts`` checks what it can up front (the version is deployable, the target
resolves to enrolled devices, the policy is valid), stores the rollout with its cohort
assignment and answers 201; the leader's engine (in whichever ``fedge cloud serve``
process holds the lease) runs it. Pause, resume, abort, rollback and approve record a
request that the leader applies on its next step (the answer's ``control`` shows it until
then); a request the state does not allow is a 409 ``invalid_state``. Operators mutate,
viewers read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from cloud.api.deps import AuditDep, Audited, OperatorToken, ResourcesDep, ViewerToken
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.schemas_rollouts import (
    CoordinatorOut,
    PolicyOut,
    PolicyPage,
    RolloutEventOut,
    RolloutEventPage,
    RolloutIn,
    RolloutOut,
    RolloutPage,
)
from cloud.rollout.create import resolve_policy, start_rollout
from cloud.rollout.policy import RolloutPolicy
from cloud.rollout.records import CONTROL_ALLOWED, RolloutControl, RolloutState
from shared.errors import ConfigError

__all__ = ["policies_router", "router"]

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"], dependencies=[Audited])
policies_router = APIRouter(
    prefix="/v1/rollout-policies", tags=["rollouts"], dependencies=[Audited]
)

RolloutId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
PolicyName = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
]


@router.post(
    "",
    name="rollouts.create",
    status_code=201,
    response_model=RolloutOut,
    responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422),
)
def create_rollout(
    body: RolloutIn, res: ResourcesDep, token: OperatorToken, audit: AuditDep, response: Response
) -> RolloutOut:
    """Start a staged rollout of a version (operator); 201 with the rollout."""
    policy = resolve_policy(res.store, body.policy, body.policy_name, body.target)
    rollout = start_rollout(
        res.store,
        res.registry,
        body.version,
        policy,
        created_by=token.token_id,
        now=res.now(),
        name=body.name,
        policy_name=body.policy_name,
    )
    audit.target = rollout.rollout_id
    audit.detail = {"version": rollout.version_ref, "devices": len(rollout.devices)}
    response.headers["Location"] = f"/v1/rollouts/{rollout.rollout_id}"
    return RolloutOut.of(rollout, devices=True)


@router.get(
    "",
    name="rollouts.list",
    response_model=RolloutPage,
    responses=problem_responses(400, 401, 422),
)
def list_rollouts(
    res: ResourcesDep,
    token: ViewerToken,
    state: RolloutState | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RolloutPage:
    """Rollouts, newest first, without their devices (viewer)."""
    page = res.store.list_rollouts(state=state, cursor=cursor, limit=limit)
    counts = res.store.rollout_counts([r.rollout_id for r in page.items])
    items = [RolloutOut.of(r, counts=counts[r.rollout_id]) for r in page.items]
    return RolloutPage(items=items, next_cursor=page.next_cursor)


@router.get(
    "/coordinator",
    name="rollouts.coordinator",
    response_model=CoordinatorOut,
    responses=problem_responses(401),
)
def coordinator(res: ResourcesDep, token: ViewerToken) -> CoordinatorOut:
    """Whether the answering process holds the leader lease (viewer)."""
    loop = res.rollouts
    return CoordinatorOut(leader=bool(getattr(loop, "leader", False)), running=loop is not None)


@router.get(
    "/{rollout_id}",
    name="rollouts.get",
    response_model=RolloutOut,
    responses=problem_responses(401, 404, 422),
)
def get_rollout(rollout_id: RolloutId, res: ResourcesDep, token: ViewerToken) -> RolloutOut:
    """One rollout with its cohorts and every device's progress (viewer)."""
    return RolloutOut.of(res.store.get_rollout(rollout_id), devices=True)


@router.get(
    "/{rollout_id}/events",
    name="rollouts.events",
    response_model=RolloutEventPage,
    responses=problem_responses(401, 404, 422),
)
def rollout_events(
    rollout_id: RolloutId,
    res: ResourcesDep,
    token: ViewerToken,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> RolloutEventPage:
    """The rollout's timeline, oldest first: transitions and every gate decision with its
    values, thresholds and sample counts (viewer)."""
    events = res.store.list_rollout_events(rollout_id, after=after, limit=limit)
    next_after = events[-1].event_id if len(events) == limit else None
    return RolloutEventPage(items=[RolloutEventOut.of(e) for e in events], next_after=next_after)


def _control(res: ResourcesDep, rollout_id: str, action: RolloutControl) -> RolloutOut:
    try:
        rollout = res.store.request_rollout_control(
            rollout_id, action, allowed=CONTROL_ALLOWED[action]
        )
    except ConfigError as exc:
        if exc.code == "invalid_state":
            raise ApiProblem(409, "invalid_state", exc.message) from exc
        raise
    return RolloutOut.of(rollout, counts=res.store.rollout_counts([rollout_id])[rollout_id])


_CONTROL_RESPONSES = problem_responses(401, 403, 404, 409, 422)


@router.post(
    "/{rollout_id}/pause",
    name="rollouts.pause",
    status_code=202,
    response_model=RolloutOut,
    responses=_CONTROL_RESPONSES,
)
def pause(rollout_id: RolloutId, res: ResourcesDep, token: OperatorToken) -> RolloutOut:
    """Stop after the current step (operator)."""
    return _control(res, rollout_id, RolloutControl.PAUSE)


@router.post(
    "/{rollout_id}/resume",
    name="rollouts.resume",
    status_code=202,
    response_model=RolloutOut,
    responses=_CONTROL_RESPONSES,
)
def resume(rollout_id: RolloutId, res: ResourcesDep, token: OperatorToken) -> RolloutOut:
    """Continue a paused rollout (operator)."""
    return _control(res, rollout_id, RolloutControl.RESUME)


@router.post(
    "/{rollout_id}/abort",
    name="rollouts.abort",
    status_code=202,
    response_model=RolloutOut,
    responses=_CONTROL_RESPONSES,
)
def abort(rollout_id: RolloutId, res: ResourcesDep, token: OperatorToken) -> RolloutOut:
    """Abort: roll the current cohort back; later cohorts are never touched (operator)."""
    return _control(res, rollout_id, RolloutControl.ABORT)


@router.post(
    "/{rollout_id}/rollback",
    name="rollouts.rollback",
    status_code=202,
    response_model=RolloutOut,
    responses=_CONTROL_RESPONSES,
)
def rollback(rollout_id: RolloutId, res: ResourcesDep, token: OperatorToken) -> RolloutOut:
    """Roll back every device this rollout updated, even after it completed (operator)."""
    return _control(res, rollout_id, RolloutControl.ROLLBACK)


@router.post(
    "/{rollout_id}/approve",
    name="rollouts.approve",
    status_code=202,
    response_model=RolloutOut,
    responses=_CONTROL_RESPONSES,
)
def approve(rollout_id: RolloutId, res: ResourcesDep, token: OperatorToken) -> RolloutOut:
    """Approve the current cohort under ``manual_approval`` (operator)."""
    return _control(res, rollout_id, RolloutControl.APPROVE)


@policies_router.get(
    "", name="rollout_policies.list", response_model=PolicyPage, responses=problem_responses(401)
)
def list_policies(res: ResourcesDep, token: ViewerToken) -> PolicyPage:
    """Every named policy (viewer)."""
    items = [
        PolicyOut(name=name, policy=RolloutPolicy.model_validate(body))
        for name, body in res.store.list_rollout_policies().items()
    ]
    return PolicyPage(items=items)


@policies_router.put(
    "/{name}",
    name="rollout_policies.put",
    response_model=PolicyOut,
    responses=problem_responses(400, 401, 403, 413, 415, 422),
)
def put_policy(
    name: PolicyName, body: RolloutPolicy, res: ResourcesDep, token: OperatorToken
) -> PolicyOut:
    """Create or replace a named policy (operator)."""
    res.store.save_rollout_policy(name, body.model_dump(mode="json"), now=res.now())
    return PolicyOut(name=name, policy=body)
