"""RFC 9457 problem details for every error the control API returns.

Every error response is ``application/problem+json``::

    {"type": "https://fedge.dev/problems/not_found", "title": "Not Found", "status": 404,
     "detail": "no model version 'cnn@9' in the registry", "instance": "/v1/models/cnn/…",
     "code": "not_found"}

``code`` is the stable machine-readable code (the :class:`~shared.errors.FedgeError` code
for errors raised by the domain, else one of this module's codes); ``type`` is derived from
it, so both are stable across releases. Unexpected exceptions become a 500 whose detail
says nothing about the internals (the traceback goes to the log).

Also here: the ASGI middleware that bounds request bodies (413), refuses bodies that are not
JSON (415) and counts requests for Prometheus.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    ArtifactStoreError,
    ConfigError,
    FedgeError,
    InvalidIdentifierError,
    NotDeployableError,
    NotFoundError,
    RegistryError,
    SecurityError,
)

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "ApiProblem",
    "Problem",
    "install_error_handlers",
    "problem_response",
    "problem_responses",
    "status_of",
]

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://fedge.dev/problems/"
#: Request bodies larger than this are refused with 413 before they are parsed.
MAX_BODY_BYTES = 1024 * 1024

#: The code of a plain HTTP error (no domain error behind it).
_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}

#: Codes whose status differs from what their class alone says.
_CODE_STATUS: dict[str, int] = {
    "already_enrolled": 409,
    "invalid_token": 401,  # an unknown bearer token (enrollment maps its own, see devices)
    "jobs_busy": 503,
}


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Stable URI of the problem type.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What happened, for people.")
    instance: str = Field(description="The request path this occurrence is about.")
    code: str = Field(description="Stable machine-readable code (the FedgeError code).")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Request validation errors (422 only)."
    )


class ApiProblem(Exception):
    """An HTTP-level refusal raised by the API itself (401, 403, 413, 416, 501, 503 …)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def status_of(exc: FedgeError) -> int:
    """The HTTP status of a domain error."""
    if exc.code in _CODE_STATUS:
        return _CODE_STATUS[exc.code]
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, NotDeployableError):
        return 409
    if isinstance(exc, InvalidIdentifierError):
        return 422
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, SecurityError):
        return 403
    if isinstance(exc, ArtifactStoreError | RegistryError):
        return 500
    return 500


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(
    status: int, code: str, detail: str, instance: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON object of a problem."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": _title(status),
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
    }
    body.update(extra or {})
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    instance: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    return JSONResponse(
        jsonable_encoder(problem_body(status, code, detail, instance, extra)),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


_DESCRIPTIONS = {
    400: "Invalid request (problem details).",
    401: "Missing, unknown or revoked bearer token.",
    403: "The token's role may not do this, or a security check refused the request.",
    404: "No such resource.",
    409: "Conflicts with the current state.",
    413: "Request body over the size limit.",
    415: "Request body is not JSON.",
    416: "Range not satisfiable.",
    422: "Request validation failed.",
    500: "Internal error.",
    501: "Not implemented.",
    503: "Unavailable (a dependency is down or the job queue is full).",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status (and 500, 503) documented as a :class:`Problem`.

    The media type is rewritten to ``application/problem+json`` in the OpenAPI document by
    :func:`problem_media_types`.
    """
    every = sorted({*statuses, 500, 503})  # any route: an unexpected error, not ready
    return {s: {"model": Problem, "description": _DESCRIPTIONS.get(s, _title(s))} for s in every}


def _instance(request: Request) -> str:
    return request.url.path


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers for every error class."""

    async def on_api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            _instance(request),
            headers=exc.headers,
            extra=exc.extra,
        )

    async def on_fedge_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FedgeError)
        status = status_of(exc)
        detail = exc.message
        if status >= 500:  # the message may name database internals: it goes to the log
            log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
            detail = f"internal error ({exc.code}); see the coordinator log"
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return problem_response(status, exc.code, detail, _instance(request), headers=headers)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = getattr(exc, "code", None) or _HTTP_CODES.get(
            exc.status_code, f"http_{exc.status_code}"
        )
        detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
        return problem_response(
            exc.status_code, code, detail, _instance(request), headers=exc.headers
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid')}" if first else "invalid request"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(
            422, "validation_error", detail, _instance(request), extra={"errors": errors}
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path, exc_info=exc)
        return problem_response(
            500, "internal_error", "internal error; see the coordinator log", _instance(request)
        )

    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(FedgeError, on_fedge_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)


def problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the error responses of an OpenAPI document to ``application/problem+json``."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if str(status)[0] in "45" and content and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema
