"""The request handler of the loopback HTTP API: routes, bounds and error answers.

Split from :mod:`edge.inference.server`, which owns the listening socket, the connection
cap and the lifecycle (see its docstring for the routes and limits). A handler reads each
request within a whole-request deadline, answers every client mistake with a 4xx JSON
error whose message never quotes the request, and never lets an exception reach the
server loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

import numpy as np

from edge.inference.catalog import ModelSet
from edge.inference.http_codec import HttpError, array_from_json, array_from_npy
from shared.errors import InferenceError, RequestError


class HandlerServer(Protocol):
    """What a handler needs of its server (:class:`edge.inference.server.InferenceServer`'s
    own ``ThreadingHTTPServer``); a Protocol, so this module does not import that one."""

    models: ModelSet
    max_body_bytes: int
    request_timeout: float


__all__ = ["Handler", "HandlerServer"]

logger = logging.getLogger("edge.inference.server")  # one logger for the whole endpoint

_NPY_TYPES = ("application/x-npy", "application/octet-stream")
_MODEL_ROUTE = re.compile(r"/v1/models/([a-z0-9][a-z0-9_-]{0,62})/predict", re.ASCII)
# RFC 9110: Content-Length = 1*DIGIT. int() alone would also take "+5", "1_0" and
# non-ASCII digits such as "١٢".
_LENGTH_RE = re.compile(r"[0-9]+", re.ASCII)
# Longer than this many significant digits is over any body limit (and int() would balk
# at thousands of digits).
_MAX_LENGTH_DIGITS = 18

# Answers to the errors the stdlib request parser reports itself (its own messages quote
# the request line back, and it answers in HTML): status, code, message.
_PARSER_ERRORS: dict[int, tuple[HTTPStatus, str, str]] = {
    HTTPStatus.BAD_REQUEST: (HTTPStatus.BAD_REQUEST, "bad_request", "malformed HTTP request"),
    HTTPStatus.REQUEST_URI_TOO_LONG: (
        HTTPStatus.REQUEST_URI_TOO_LONG,
        "uri_too_long",
        "request line too long",
    ),
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: (
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        "a header line is too long or there are too many headers",
    ),
    # Unknown method: the stdlib says 501, but it is the client's mistake.
    HTTPStatus.NOT_IMPLEMENTED: (
        HTTPStatus.METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed: use GET /v1/health or POST /v1/infer",
    ),
    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: (
        HTTPStatus.BAD_REQUEST,
        "bad_version",
        "HTTP version not supported: use HTTP/1.1",
    ),
}


class _DeadlineReader(io.RawIOBase):
    """The socket's read side, failing with ``TimeoutError`` once :attr:`deadline` passes.

    A plain socket timeout bounds each ``recv``; a client that sends one byte just
    before it expires would hold the connection forever. Setting the timeout to the time
    left before every ``recv`` bounds the whole request instead.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """One connection's requests (keep-alive), served on its own thread."""

    server: HandlerServer  # type: ignore[assignment]  # our server, not any BaseServer
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
    # Headers and body go out as two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms per request on Linux).
    disable_nagle_algorithm = True
    server_version = "fedge-edge"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Replace the stdlib's reader with one that enforces the per-request deadline.
        self.rfile.close()  # drops the socket-file reference only, not the socket
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._responding = False  # part of a response written (see _guard)
        # Writes: a per-send timeout, so a client that never reads cannot pin the thread.
        self.connection.settimeout(self.server.request_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        # The deadline starts when the server starts waiting: it also bounds keep-alive
        # idling between two requests.
        self._reader.deadline = time.monotonic() + self.server.request_timeout
        self._responding = False
        try:
            super().handle_one_request()  # closes the connection itself on TimeoutError
        except ConnectionError:
            # The client reset or went away mid-request: nothing to answer, no traceback.
            self.close_connection = True

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            # A two-word request line: HTTP/0.9 has no headers or status line, so no
            # Content-Length, no keep-alive and no JSON error could be exchanged.
            self.send_error(HTTPStatus.BAD_REQUEST)
            return False
        return True

    def handle_expect_100(self) -> bool:
        # Refuse a bad or oversized body before inviting the client to send it.
        if self.command == "POST":
            try:
                self._content_length()
            except HttpError as exc:
                self._error(exc.status, exc.code, exc.message)
                return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer the stdlib parser's own errors as JSON, with fixed messages.

        ``message`` and ``explain`` are ignored on purpose: the stdlib's texts quote the
        request line back.
        """
        status, err_code, text = _PARSER_ERRORS.get(
            code,
            (HTTPStatus(code), "bad_request", "bad request")
            if 400 <= code < 500
            else (HTTPStatus.BAD_REQUEST, "bad_request", "malformed HTTP request"),
        )
        # The parser gave up mid-request: what follows on the connection is unknown.
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # Also the default before a version was parsed; answered that way, the
            # response would have no status line at all.
            self.request_version = "HTTP/1.0"
        with contextlib.suppress(OSError):  # the client may already be gone
            self._error(status, err_code, text)

    def _send(
        self, status: HTTPStatus, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        # Reading left the socket timeout at "time left before the deadline"; a response
        # gets the full per-send timeout again.
        self.connection.settimeout(self.server.request_timeout)
        self._responding = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _error(self, status: HTTPStatus, code: str, message: str) -> None:
        self._json(status, {"error": {"code": code, "message": message}})

    def _guard(self, route: Callable[[], None]) -> None:
        try:
            route()
        except HttpError as exc:
            self._error(exc.status, exc.code, exc.message)
        except TimeoutError:
            # Reading: the body did not arrive before the deadline (slow client or slow
            # loris). Writing: the client does not read its answer; drop it, do not wait
            # a second time for a 408 it will not read either.
            self.close_connection = True
            if self._responding:
                return
            with contextlib.suppress(OSError):
                self._error(
                    HTTPStatus.REQUEST_TIMEOUT,
                    "timeout",
                    f"request not received within {self.server.request_timeout:g} s",
                )
        except ConnectionError:
            self.close_connection = True
        except Exception:  # last resort: log, answer 500, keep the server alive
            logger.exception("unhandled error serving %s %r", self.command, self.path[:200])
            self.close_connection = True
            if self._responding:
                return  # part of an answer is out: a second one would corrupt the stream
            with contextlib.suppress(OSError):  # the client may already be gone
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "internal error")

    def _has_body(self) -> bool:
        length = (self.headers.get("Content-Length") or "").strip()
        return "Transfer-Encoding" in self.headers or length not in ("", "0")

    def do_GET(self) -> None:
        if self._has_body():
            # A GET body is never read; left on the connection, it would be parsed as the
            # next request.
            self.close_connection = True
        self._guard(self._get)

    do_HEAD = do_GET  # same answer, _send omits the body

    def do_POST(self) -> None:
        self._guard(self._post)

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # the body (if any) was not read
        self._error(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed: use GET /v1/health or POST /v1/infer",
        )

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _get(self) -> None:
        if self.path == "/v1/infer":
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        if self.path == "/v1/models":
            models = self.server.models
            listing = {
                name: (p.active.to_dict() if p.active is not None else None)
                for name, p in models.items()
            }
            self._json(HTTPStatus.OK, {"default": models.default_name, "models": listing})
            return
        if _MODEL_ROUTE.fullmatch(self.path):
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        if self.path != "/v1/health":
            raise HttpError(HTTPStatus.NOT_FOUND, "not_found", "no such route")
        info = self.server.models.default.active
        if info is None:
            self._json(
                HTTPStatus.SERVICE_UNAVAILABLE, {"status": "no_model", "model_version": None}
            )
        else:
            self._json(
                HTTPStatus.OK,
                {"status": "ok", "model_version": info.version, "model": info.to_dict()},
            )

    def _content_length(self) -> int:
        """The declared body length, checked against the limit (body not read).

        Raises:
            HttpError: chunked, missing, malformed, repeated or over the limit; all of
                them close the connection, since the body stays unread.
        """
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send Content-Length, not chunked"
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length is required"
            )
        # Two Content-Length headers: which one frames the body is ambiguous (the
        # request-smuggling class), so neither is trusted.
        digits = values[0].strip(" \t")
        if len(values) > 1 or not _LENGTH_RE.fullmatch(digits):
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad_length", "invalid Content-Length")
        limit = self.server.max_body_bytes
        significant = digits.lstrip("0")
        if len(significant) > _MAX_LENGTH_DIGITS or int(significant or "0") > limit:
            # Do not read (or buffer) the body: answer and drop the connection.
            self.close_connection = True
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"body is over the {limit}-byte limit",
            )
        return int(significant or "0")

    def _read_body(self) -> bytes:
        length = self._content_length()
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.BAD_REQUEST, "short_body", "body shorter than Content-Length"
            )
        return body

    def _post(self) -> None:
        route = _MODEL_ROUTE.fullmatch(self.path)
        if self.path != "/v1/infer" and route is None:
            self.close_connection = True
            raise HttpError(HTTPStatus.NOT_FOUND, "not_found", "no such route")
        predictor = self.server.models.get(route.group(1) if route else None)
        if predictor is None:
            self.close_connection = True  # the body is not read
            raise HttpError(
                HTTPStatus.NOT_FOUND, "unknown_model", "no model of that name is served"
            )
        body = self._read_body()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            x = array_from_json(body)
        elif ctype in _NPY_TYPES:
            x = array_from_npy(body)
        else:
            raise HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json or application/x-npy",
            )
        try:
            out, version = predictor.predict_versioned(x)
        except RequestError as exc:
            raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, exc.code, exc.message) from exc
        except InferenceError as exc:
            status = (
                HTTPStatus.SERVICE_UNAVAILABLE
                if exc.code == "no_model"
                else HTTPStatus.INTERNAL_SERVER_ERROR
            )
            raise HttpError(status, exc.code, exc.message) from exc
        accept = (self.headers.get("Accept") or "").lower()
        if "application/x-npy" in accept:
            buf = io.BytesIO()
            np.save(buf, out, allow_pickle=False)
            self._send(
                HTTPStatus.OK, buf.getvalue(), "application/x-npy", {"X-Model-Version": version}
            )
        else:
            self._json(
                HTTPStatus.OK,
                {"model_version": version, "shape": list(out.shape), "outputs": out.tolist()},
            )
