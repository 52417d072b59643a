"""``/v1/devices``: enrollment tokens, enrollment, listing, labels, revocation.

Enrollment writes the device's keys into the key home (``KeyHome.enroll_device``: its
bundle there, its enrollment record — with profile and tags — in the fleet database, one
row) and re-renders the broker ACL/CRL; the response is the device's bundle
(its private keys!), so it is ``Cache-Control: no-store`` and shown once. Revocation takes
the device out of the ACL, puts its certificate on the CRL, evicts its live session and
reloads the broker before it answers (``cloud.broker_process.refresh_broker``, rule B5).
"""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from cloud.api.deps import (
    AdminToken,
    AuditDep,
    Audited,
    OperatorToken,
    Resources,
    ResourcesDep,
    ViewerToken,
)
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.schemas import (
    BrokerRefresh,
    DeviceBundle,
    DeviceDetail,
    DeviceOut,
    DevicePage,
    DevicePatch,
    DeviceRevoked,
    EnrollIn,
    EnrollmentTokenIn,
    EnrollmentTokenOut,
    StatusOut,
    TelemetryOut,
)
from cloud.broker_process import refresh_broker
from cloud.fleet.credentials import records_in_store
from cloud.keys import KeyHome
from shared.errors import ConfigError, FedgeError, InvalidTokenError
from shared.identifiers import IDENTIFIER_PATTERN, IdentifierKind, check_new_name

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/devices", tags=["devices"], dependencies=[Audited])

DeviceId = Annotated[
    str, Path(pattern=f"^{IDENTIFIER_PATTERN}$", max_length=64, description="Device id.")
]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _refresh(res: Resources, *, evict: tuple[str, ...] = ()) -> BrokerRefresh:
    """Rewrite ACL/CRL (and evict, SIGHUP) if a broker configuration exists."""
    files = res.broker_files
    if files is None or not files.conf.exists():
        return BrokerRefresh(configured=False)
    result = refresh_broker(res.home, files, evict=evict)
    return BrokerRefresh(
        configured=True,
        broker_reloaded=bool(result.get("broker_reloaded")),
        evicted=list(result.get("evicted", [])),
        refused=result.get("refused"),
    )


@router.post(
    "/enrollment-tokens",
    name="devices.enrollment_token",
    status_code=201,
    response_model=EnrollmentTokenOut,
    responses=problem_responses(400, 401, 403, 409, 413, 415, 422),
)
def create_enrollment_token(
    body: EnrollmentTokenIn,
    res: ResourcesDep,
    token: OperatorToken,
    audit: AuditDep,
    response: Response,
) -> EnrollmentTokenOut:
    """A one-time enrollment token for one device (operator). The secret is shown once."""
    audit.target = body.device_id
    check_new_name(body.device_id, IdentifierKind.DEVICE)  # no token for a reserved name
    for group in body.groups:
        check_new_name(group, IdentifierKind.GROUP)
    if body.device_id in res.home.fleet():
        raise ConfigError(f"device {body.device_id} is already enrolled", code="already_enrolled")
    secret, record = res.store.create_enrollment_token(
        body.device_id,
        hardware_id=body.hardware_id,
        profile=body.profile,
        groups=body.groups,
        tags=body.tags,
        ttl_s=body.ttl_s,
        now=res.now(),
    )
    audit.detail = {"token_id": record.token_id}
    response.headers.update(NO_STORE)
    return EnrollmentTokenOut(
        token=secret,
        token_id=record.token_id,
        device_id=record.device_id,
        hardware_id=record.hardware_id,
        profile=record.profile,
        groups=record.groups,
        tags=record.tags,
        created_at=record.created_at,
        expires_at=record.expires_at,
    )


def _bundle_files(home: KeyHome, device_id: str) -> dict[str, str]:
    directory = home.device_dir(device_id)
    return {
        p.name: base64.b64encode(p.read_bytes()).decode("ascii")
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@router.post(
    "/enroll",
    name="devices.enroll",
    status_code=201,
    response_model=DeviceBundle,
    responses=problem_responses(400, 403, 409, 413, 415, 422),
    openapi_extra={"security": []},
)
def enroll(body: EnrollIn, res: ResourcesDep, audit: AuditDep, response: Response) -> DeviceBundle:
    """Redeem an enrollment token: keys are created, the device recorded, the broker ACL
    refreshed; the answer is the device's bundle (no bearer token: the enrollment token
    in the body is the credential). ``403 token_used`` on a second use."""
    audit.actor = "enrollment"
    try:
        record = res.store.redeem_enrollment_token(body.token, now=res.now())
    except InvalidTokenError as exc:  # a credential in the body: always 403, never 401
        raise ApiProblem(403, exc.code, exc.message) from exc
    audit.target = record.device_id
    audit.detail = {"token_id": record.token_id}
    if record.device_id in res.home.fleet():
        raise ConfigError(f"device {record.device_id} is already enrolled", code="already_enrolled")
    res.home.enroll_device(
        record.device_id,
        hardware_id=record.hardware_id,
        groups=record.groups,
        profile=record.profile,
        tags=record.tags,
    )
    if not records_in_store(res.home, res.store):  # a key home keeping its own fleet.json
        res.store.add_device(
            record.device_id,
            hardware_id=record.hardware_id,
            profile=record.profile,
            groups=record.groups,
            tags=record.tags,
            enrolled_at=res.now(),
        )
    try:
        broker = _refresh(res)
    except (FedgeError, OSError) as exc:  # enrolled all the same; the next refresh fixes it
        log.warning("broker not refreshed after enrolling %s: %s", record.device_id, exc)
        broker = BrokerRefresh(configured=True, error=str(exc))
    response.headers.update(NO_STORE)
    return DeviceBundle(
        device_id=record.device_id,
        hardware_id=record.hardware_id,
        groups=sorted(set(record.groups)),
        files=_bundle_files(res.home, record.device_id),
        broker=broker,
    )


@router.get(
    "",
    name="devices.list",
    response_model=DevicePage,
    responses=problem_responses(400, 401, 422),
)
def list_devices(
    res: ResourcesDep,
    token: ViewerToken,
    group: Annotated[str | None, Query(max_length=64)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    profile: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    model_version: Annotated[str | None, Query(max_length=200)] = None,
    include_revoked: bool = False,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DevicePage:
    """Devices ordered by id, filtered; pass ``next_cursor`` back as ``cursor`` (viewer)."""
    page = res.store.list_devices(
        group=group,
        tag=tag,
        profile=profile,
        online=online,
        model_version=model_version,
        revoked=None if include_revoked else False,
        cursor=cursor,
        limit=limit,
    )
    return DevicePage(
        items=[DeviceOut.model_validate(d) for d in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{device_id}",
    name="devices.get",
    response_model=DeviceDetail,
    responses=problem_responses(401, 404, 422),
)
def get_device(device_id: DeviceId, res: ResourcesDep, token: ViewerToken) -> DeviceDetail:
    """One device with its five newest statuses and its newest telemetry (viewer)."""
    device = res.store.get_device(device_id)
    history = res.store.status_history(device_id, limit=5)
    latest = res.store.latest_telemetry(device_id)
    return DeviceDetail.model_validate(
        {
            **DeviceOut.model_validate(device).model_dump(),
            "status_history": [StatusOut.model_validate(s) for s in history],
            "latest_telemetry": TelemetryOut.model_validate(latest) if latest else None,
        }
    )


def _set_fleet_groups(res: Resources, device_id: str, groups: list[str]) -> None:
    """Groups of a key home keeping its records outside the fleet database (its own
    fleet.json); with the records in the database, ``set_labels`` is the one write."""
    if not records_in_store(res.home, res.store) and device_id in res.home.fleet():
        res.home.set_groups(device_id, groups)


@router.patch(
    "/{device_id}",
    name="devices.patch",
    response_model=DeviceOut,
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422),
)
def patch_device(
    device_id: DeviceId,
    body: DevicePatch,
    res: ResourcesDep,
    token: OperatorToken,
    audit: AuditDep,
) -> DeviceOut:
    """Replace a device's groups and/or tags (operator); groups re-render the broker ACL."""
    res.store.get_device(device_id)  # 404 before anything changes
    groups = None
    if body.groups is not None:
        groups = sorted({check_new_name(g, IdentifierKind.GROUP) for g in body.groups})
    audit.detail = {"groups": groups, "tags": body.tags}
    if groups is not None:
        _set_fleet_groups(res, device_id, groups)
    # devices.groups is the ACL's source: the broker is re-rendered from it just below.
    device = res.store.set_labels(device_id, groups=groups, tags=body.tags)
    if groups is not None:
        _refresh(res)
    return DeviceOut.model_validate(device)


@router.post(
    "/{device_id}/revoke",
    name="devices.revoke",
    response_model=DeviceRevoked,
    responses=problem_responses(401, 403, 404, 422, 500),
)
def revoke_device(
    device_id: DeviceId, res: ResourcesDep, token: AdminToken, audit: AuditDep
) -> DeviceRevoked:
    """Revoke a device (admin): off the ACL, certificate on the CRL, live session evicted,
    broker reloaded — its broker access has ended when this answers."""
    res.home.revoke_device(device_id, at=res.now())  # devices.revoked_at: off the ACL
    failure: Exception | None = None
    try:
        broker = _refresh(res, evict=(device_id,))
    except (FedgeError, OSError) as exc:
        failure, broker = exc, BrokerRefresh(configured=True, error=str(exc))
    device = res.store.mark_revoked(device_id, at=res.now())  # idempotent: already set
    detail: dict[str, Any] = broker.model_dump()
    audit.detail = detail
    if failure is not None:
        raise ApiProblem(
            500,
            "broker_refresh_failed",
            f"{device_id} is revoked in the key home and the fleet, but the broker was not "
            f"refreshed ({failure}); run `fedge broker refresh`",
        ) from failure
    return DeviceRevoked(device=DeviceOut.model_validate(device), broker=broker)
