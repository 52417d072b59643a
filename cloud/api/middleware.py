"""The API's request middleware: bounded bodies (413), JSON only (415), no control
characters in the URL and no NUL in a JSON body (422), a request counter (metrics).

Every refusal is a problem+json response (:mod:`cloud.api.errors`), for every route.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_to_bytes

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api.errors import MAX_BODY_BYTES, problem_response
from cloud.observability import REQUESTS

__all__ = ["BodyLimitMiddleware"]


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class _NulInBody(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(422, "a NUL character (\\u0000) is not allowed in a request body")
        self.code = "invalid_characters"  # the problem code, as for the URL


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
"""C0 controls and DEL: no path segment or query value of the API has a use for them, and
a NUL would reach PostgreSQL, which refuses it in a text parameter (a 500)."""

_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""``\u0000`` in a JSON text, unless its backslash is itself escaped (``\\u0000``)."""


def _has_control(raw: bytes) -> bool:
    """Whether the percent-decoded ``raw`` (a path or a query string) holds a control."""
    return _CONTROL.search(unquote_to_bytes(raw.replace(b"+", b" "))) is not None


class BodyLimitMiddleware:
    """Bounds request bodies (413), requires JSON bodies (415), refuses control characters
    in the URL and NULs in JSON bodies (422), counts requests (metrics).

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    chunked body is counted as it is read and refused once it passes the limit. One check
    here, for every route, stands between any text a client sends and the database.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_holder: dict[str, int] = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = int(message["status"])
            await send(message)

        try:
            refused = self._refuse(scope)
            if refused is not None:
                await refused(scope, receive, send_wrapper)
                return
            await self.app(scope, self._counting(receive), send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status_holder["status"])).inc()

    def _refuse(self, scope: Scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        instance = scope.get("path", "")
        raw_path = scope.get("raw_path") or instance.encode("utf-8", "surrogateescape")
        if _has_control(raw_path) or _has_control(scope.get("query_string", b"")):
            return problem_response(
                422,
                "invalid_characters",
                "control characters (such as NUL) are not allowed in the path or query",
                instance.encode("unicode_escape").decode("ascii")[:200],
            )
        length_header = headers.get("content-length")
        length = 0
        if length_header is not None:
            try:
                length = int(length_header)
            except ValueError:
                return problem_response(400, "bad_request", "invalid Content-Length", instance)
            if length > self.limit:
                return problem_response(
                    413, "payload_too_large", f"request body over {self.limit} bytes", instance
                )
        has_body = length > 0 or "chunked" in headers.get("transfer-encoding", "").lower()
        if has_body and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            content_type = headers.get("content-type", "")
            if not _is_json(content_type):
                shown = json.dumps(content_type[:80])
                return problem_response(
                    415,
                    "unsupported_media_type",
                    f"request bodies must be application/json, not {shown}",
                    instance,
                )
        return None

    def _counting(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.limit

        tail = b""  # the end of the previous chunk: an escape may straddle two chunks

        async def wrapped() -> Message:
            nonlocal seen, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > limit:
                    raise _BodyTooLarge(limit)
                window = tail + chunk
                if _JSON_NUL.search(window):
                    raise _NulInBody()
                # Keep what an escape split here needs: the last 5 bytes, the run of
                # backslashes before them (its parity decides) and one byte before that.
                cut = max(0, len(window) - 5)
                while cut > 0 and window[cut - 1] == 0x5C:  # a backslash
                    cut -= 1
                tail = window[max(0, cut - 1) :]
            return message

        return wrapped
