"""``/v1/tokens`` and ``/v1/audit``: API tokens and the audit log (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from cloud.api.deps import AdminToken, AuditDep, Audited, ResourcesDep
from cloud.api.errors import problem_responses
from cloud.api.schemas import AuditEntryOut, AuditPage, TokenIn, TokenList, TokenOut, TokenSecretOut

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["tokens"], dependencies=[Audited])

TokenId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]


@router.get(
    "/tokens",
    name="tokens.list",
    response_model=TokenList,
    responses=problem_responses(401, 403),
)
def list_tokens(res: ResourcesDep, token: AdminToken) -> TokenList:
    """Every API token, without secrets (admin)."""
    return TokenList(items=[TokenOut.model_validate(t) for t in res.store.list_api_tokens()])


@router.post(
    "/tokens",
    name="tokens.create",
    status_code=201,
    response_model=TokenSecretOut,
    responses=problem_responses(400, 401, 403, 413, 415, 422),
)
def create_token(
    body: TokenIn, res: ResourcesDep, token: AdminToken, audit: AuditDep, response: Response
) -> TokenSecretOut:
    """A new API token (admin); the secret is shown only in this response."""
    secret, record = res.store.create_api_token(body.role, name=body.name, now=res.now())
    audit.target = record.token_id
    audit.detail = {"role": str(record.role), "name": record.name}
    response.headers["Cache-Control"] = "no-store"
    return TokenSecretOut(token=secret, **TokenOut.model_validate(record).model_dump())


@router.post(
    "/tokens/{token_id}/revoke",
    name="tokens.revoke",
    response_model=TokenOut,
    responses=problem_responses(401, 403, 404, 422),
)
def revoke_token(token_id: TokenId, res: ResourcesDep, token: AdminToken) -> TokenOut:
    """Revoke an API token (admin; idempotent): it authenticates nothing from now on."""
    return TokenOut.model_validate(res.store.revoke_api_token(token_id, at=res.now()))


@router.get(
    "/audit",
    name="audit.list",
    response_model=AuditPage,
    responses=problem_responses(400, 401, 403, 422),
)
def list_audit(
    res: ResourcesDep,
    token: AdminToken,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """The audit log, newest first (admin)."""
    page = res.store.list_audit(cursor=cursor, limit=limit)
    return AuditPage(
        items=[AuditEntryOut.model_validate(e) for e in page.items], next_cursor=page.next_cursor
    )
