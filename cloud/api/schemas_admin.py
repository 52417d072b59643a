"""Token, audit and health models of the control API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.api.schemas_base import _Out
from cloud.fleet.records import Role

# --- tokens and audit ---------------------------------------------------------------------


class TokenIn(BaseModel):
    """A new API token."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field(
        default="api",
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="A label for people (no control characters).",
    )


class TokenOut(_Out):
    """An API token (never its secret)."""

    token_id: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None


class TokenSecretOut(TokenOut):
    """A new API token: ``token`` is shown only in this response."""

    token: str


class TokenList(BaseModel):
    """Every API token."""

    items: list[TokenOut]


class AuditEntryOut(_Out):
    """Who did what, when, with which result."""

    entry_id: int
    at: float
    actor: str
    action: str
    target: str | None
    result: str
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    """Audit entries, newest first."""

    items: list[AuditEntryOut]
    next_cursor: str | None


# --- health -------------------------------------------------------------------------------


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """Readiness: every check passed."""

    status: Literal["ready"] = "ready"
    checks: dict[str, CheckResult]
