"""The API's long-lived resources and its ``Depends()`` aliases.

``Resources`` is what :func:`cloud.api.app.create_app` serves from: the registry, the fleet
store, the key home, the deployment jobs, the federated runs, the broker configuration (if
any) and the health checks of ``/readyz``. Routes never open anything themselves; they
declare what they need::

    def revoke(device_id: str, res: ResourcesDep, token: AdminToken) -> DeviceOut: ...

Every mutating route's router carries :func:`audit_mutation`, so each such call, refused or
not, leaves one audit entry (``actor`` = token id, ``anonymous`` or ``enrollment``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.api.auth import authenticate, require_role
from cloud.api.errors import ApiProblem
from cloud.api.federation_jobs import FederationJobs
from cloud.api.jobs import DeploymentJobs
from cloud.broker import BrokerFiles
from cloud.fleet.records import ApiToken, Role
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import Registry
from shared.errors import FedgeError

__all__ = [
    "AdminToken",
    "Audit",
    "CurrentToken",
    "FederationDep",
    "HealthCheck",
    "HomeDep",
    "JobsDep",
    "OperatorToken",
    "RegistryDep",
    "Resources",
    "ResourcesDep",
    "StoreDep",
    "ViewerToken",
    "audit_mutation",
    "get_resources",
]

log = logging.getLogger(__name__)

#: A readiness check: ``(ok, detail)``; must not raise (an exception counts as not ready).
HealthCheck = Callable[[], tuple[bool, str]]


@dataclass
class Resources:
    """Everything the API serves from (built by the lifespan, or given by the caller)."""

    registry: Registry
    store: FleetStore
    home: KeyHome
    jobs: DeploymentJobs
    broker_files: BrokerFiles | None = None
    #: ``database`` and ``broker`` (``/readyz`` needs both to pass).
    health: dict[str, HealthCheck] = field(default_factory=dict)
    now: Callable[[], float] = time.time
    #: Federated runs (None: built on the registry and store, ``FEDGE_HOME`` being the
    #: key home's parent).
    federation: FederationJobs | None = None
    #: The rollout coordinator of this process (``fedge cloud serve`` sets it; None: this
    #: process creates rollouts for a leader elsewhere to run).
    rollouts: Any = None

    def __post_init__(self) -> None:
        if self.federation is None:
            self.federation = FederationJobs(
                self.registry, self.store, home=self.home.path.parent, now=self.now
            )

    def close(self, *, wait: bool = True) -> None:
        """Stop the jobs (waiting for running publishes; a federated run ends after its
        current round) and release the database."""
        try:
            self.jobs.shutdown(wait=wait)
            if self.federation is not None:
                self.federation.shutdown(wait=wait)
        finally:
            self.registry.close()


def get_resources(request: Request) -> Resources:
    """The app's resources (503 before the lifespan opened them)."""
    resources = getattr(request.app.state, "resources", None)
    if not isinstance(resources, Resources):
        raise ApiProblem(503, "not_ready", "the coordinator is starting or stopping")
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def _store(res: ResourcesDep) -> FleetStore:
    return res.store


def _registry(res: ResourcesDep) -> Registry:
    return res.registry


def _home(res: ResourcesDep) -> KeyHome:
    return res.home


def _jobs(res: ResourcesDep) -> DeploymentJobs:
    return res.jobs


def _federation(res: ResourcesDep, request: Request) -> FederationJobs:
    if res.federation is None:  # only if a caller set it to None after construction
        raise ApiProblem(503, "not_ready", "federated runs are not available")
    leader = getattr(res.rollouts, "leader", True)  # no coordinator loop: this process runs all
    if request.method not in ("GET", "HEAD") and not leader:
        # Exactly one process (the lease holder) runs federated runs, as it runs rollouts.
        raise ApiProblem(
            503,
            "not_leader",
            "this coordinator is a standby: start or stop federated runs on the leader "
            "(GET /v1/rollouts/coordinator tells which process leads)",
        )
    return res.federation


StoreDep = Annotated[FleetStore, Depends(_store)]
FederationDep = Annotated[FederationJobs, Depends(_federation)]
RegistryDep = Annotated[Registry, Depends(_registry)]
HomeDep = Annotated[KeyHome, Depends(_home)]
JobsDep = Annotated[DeploymentJobs, Depends(_jobs)]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="API token (`fedge cloud token create --role viewer|operator|admin`).",
)


def current_token(
    request: Request,
    store: StoreDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiToken:
    """The authenticated token of the request (401 otherwise)."""
    token = authenticate(store, credentials.credentials if credentials else None)
    request.state.actor = token.token_id
    return token


CurrentToken = Annotated[ApiToken, Depends(current_token)]


def _guard(role: Role) -> Callable[[ApiToken], ApiToken]:
    def guard(token: CurrentToken) -> ApiToken:
        return require_role(token, role)

    guard.__name__ = f"require_{role}"
    return guard


ViewerToken = Annotated[ApiToken, Depends(_guard(Role.VIEWER))]
OperatorToken = Annotated[ApiToken, Depends(_guard(Role.OPERATOR))]
AdminToken = Annotated[ApiToken, Depends(_guard(Role.ADMIN))]


@dataclass
class Audit:
    """What the audit entry of the current mutating call will say (routes may refine it)."""

    action: str
    actor: str = "anonymous"
    target: str | None = None
    detail: dict[str, Any] | None = None


def _code_of(exc: BaseException) -> str:
    if isinstance(exc, ApiProblem | FedgeError):
        return exc.code
    if isinstance(exc, RequestValidationError):
        return "validation_error"
    if isinstance(exc, StarletteHTTPException):
        return f"http_{exc.status_code}"
    return "internal_error"


def audit_mutation(request: Request) -> Iterator[Audit]:
    """Router dependency: one audit entry per mutating call, with its result.

    The action is the route's ``name`` (``devices.revoke``), the target the route's first
    path parameter unless the route sets ``request.state.audit``'s target. Runs before the
    auth dependencies, so refused calls are recorded too. GET and HEAD are not audited.
    """
    route = request.scope.get("route")
    action = str(getattr(route, "name", None) or request.url.path)
    entry = Audit(action=action)
    params = dict(request.path_params)
    if params:
        entry.target = str(next(iter(params.values())))
    request.state.audit = entry
    if request.method in ("GET", "HEAD", "OPTIONS"):
        yield entry
        return
    try:
        yield entry
    except BaseException as exc:
        _write(request, entry, _code_of(exc))
        raise
    _write(request, entry, "ok")


def _write(request: Request, entry: Audit, result: str) -> None:
    resources = getattr(request.app.state, "resources", None)
    if not isinstance(resources, Resources):
        return
    actor = getattr(request.state, "actor", None) or entry.actor
    try:
        resources.store.audit(
            actor=actor,
            action=entry.action,
            target=entry.target,
            result=result,
            at=resources.now(),
            detail=entry.detail,
        )
    except Exception:  # the audit must never hide the call's own outcome
        log.exception("audit entry for %s not written", entry.action)


Audited = Depends(audit_mutation, scope="function")
AuditDep = Annotated[Audit, Audited]
