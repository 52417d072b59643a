"""Bearer tokens and roles of the control API.

Tokens are checked against :meth:`cloud.fleet.store.FleetStore.authenticate` (SHA-256 of a
256-bit secret, constant-time compare; a revoked token authenticates as nothing). Roles are
ordered ``viewer < operator < admin``: viewers read; operators change the fleet,
deployments and runs; admins also manage tokens and revoke devices.

This module is plain functions over the store; :mod:`cloud.api.deps` wires them into
FastAPI dependencies.
"""

from __future__ import annotations

from cloud.api.errors import ApiProblem
from cloud.fleet.records import ApiToken, Role
from cloud.fleet.store import FleetStore

__all__ = ["ROLE_RANK", "authenticate", "require_role"]

#: Higher may do everything lower may.
ROLE_RANK: dict[Role, int] = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fedge"'}
#: Longer than any secret the store issues; anything longer is refused unhashed.
_MAX_SECRET = 512


def authenticate(store: FleetStore, secret: str | None) -> ApiToken:
    """The token a bearer secret belongs to.

    Raises:
        ApiProblem: 401 ``missing_token`` (no bearer token) or ``invalid_token`` (unknown
            or revoked; the two are indistinguishable on purpose).
    """
    if not secret:
        raise ApiProblem(401, "missing_token", "a bearer token is required", headers=_CHALLENGE)
    token = store.authenticate(secret) if len(secret) <= _MAX_SECRET else None
    if token is None:
        raise ApiProblem(
            401,
            "invalid_token",
            "unknown or revoked bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="fedge", error="invalid_token"'},
        )
    return token


def require_role(token: ApiToken, role: Role) -> ApiToken:
    """``token`` if its role is at least ``role``.

    Raises:
        ApiProblem: 403 ``insufficient_role``.
    """
    if ROLE_RANK[token.role] < ROLE_RANK[role]:
        raise ApiProblem(
            403,
            "insufficient_role",
            f"this needs the {role} role; the token has {token.role}",
        )
    return token
