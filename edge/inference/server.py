"""Loopback HTTP endpoint for local inference (stdlib ``ThreadingHTTPServer``, no extra deps).

Routes:

* ``GET /v1/health`` → ``200 {"status": "ok", "model": {...version, shapes...}}``, or
  ``503 {"status": "no_model"}`` before a model is active.
* ``POST /v1/infer`` with ``Content-Type: application/json`` and body
  ``{"inputs": [[...]]}`` (numbers; ``"dtype": "int8"`` to send already-quantized values),
  or with ``Content-Type: application/x-npy`` (or ``application/octet-stream``) and a
  ``.npy`` file as body. The answer is JSON ``{"model_version", "shape", "outputs"}``; with
  ``Accept: application/x-npy`` it is a ``.npy`` body and an ``X-Model-Version`` header.

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status for every client
mistake, including malformed HTTP (400 bad body, request line or header, 404, 405, 408 too
slow, 411 no length, 413 too large, 415 content type, 422 wrong shape/dtype/range, 431
headers too large) and 503 when no model is active or every connection slot is taken. The
messages are fixed texts: they never quote the request back. A handler never lets an
exception reach the server loop, so one bad request cannot stop the service.

Resource limits, all constructor arguments of :class:`InferenceServer`:

* ``max_body_bytes``: a larger body is refused (413) without being read.
* ``request_timeout``: a connection must deliver each complete request (request line,
  headers and body) within this many seconds of the server starting to wait for it, so
  an idle keep-alive connection is closed after it and a client that trickles bytes
  (slow loris) is dropped; the deadline covers the whole request, not each ``recv``.
* ``max_connections``: connections served at once (one thread each). Past the cap a new
  connection gets an immediate ``503`` and is closed; the others are not affected.

The server binds to a loopback address only: it has no authentication, so it must not
face a network.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import itertools
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edge.inference.predictor import Predictor
from shared.errors import ConfigError, InferenceError, RequestError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_REQUEST_TIMEOUT",
    "InferenceServer",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Loopback clients are a handful of local processes; 32 leaves room for connection pools
# while bounding the threads (and their stacks) an errant client can make us hold.
DEFAULT_MAX_CONNECTIONS = 32
# A 1 MiB body over loopback takes milliseconds; 10 s is generous for a busy device and
# still frees a slot held by an idle or trickling client quickly.
DEFAULT_REQUEST_TIMEOUT = 10.0
_NPY_TYPES = ("application/x-npy", "application/octet-stream")
_JSON_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
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

_BUSY_BODY = json.dumps(
    {"error": {"code": "busy", "message": "too many connections; retry later"}}
).encode()
# Written raw from the accept loop (no handler thread exists for a refused connection).
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _BUSY_BODY
)
# Log "connections refused" at most this often: a flood must not flood the log too.
_REFUSED_LOG_INTERVAL = 60.0


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid input value")


def _leaf_types(inputs: Any, ndim: int) -> set[type]:
    """The Python types of the leaves of a nested list that numpy found to be ``ndim``-deep.

    ``chain.from_iterable`` flattens one level at C speed, so a 1 MiB body costs
    milliseconds. Needed because ``np.asarray([True, 1.5])`` silently gives floats.
    """
    level: Any = [inputs]
    for _ in range(ndim):
        level = itertools.chain.from_iterable(level)
    return set(map(type, level))


def _array_from_json(body: bytes) -> np.ndarray:
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            "bad_json",
            f"body is not valid JSON (line {exc.lineno}, column {exc.colno})",
        ) from exc
    except (ValueError, RecursionError) as exc:  # encoding, NaN/Infinity, nesting, huge ints
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            "bad_json",
            "body is not valid JSON (UTF-8, no NaN/Infinity, bounded nesting and integers)",
        ) from exc
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_json", 'expected an object {"inputs": [...]}')
    dtype_name = doc.get("dtype", "float32")
    # isinstance first: a list or object is unhashable and would make `in` raise.
    if not isinstance(dtype_name, str) or dtype_name not in _JSON_DTYPES:
        raise _HttpError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "wrong_dtype",
            f"dtype must be one of {', '.join(_JSON_DTYPES)}",
        )
    inputs = doc["inputs"]
    not_numbers = _HttpError(
        HTTPStatus.BAD_REQUEST,
        "bad_inputs",
        "inputs must be a non-empty, rectangular (nested) list of numbers",
    )
    try:
        raw = np.asarray(inputs)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise not_numbers from exc  # ragged, too many dimensions, or absurdly nested
    # JSON numbers only: strings, booleans, nulls and objects are not silently converted.
    if raw.dtype.kind not in "iuf" or raw.size == 0:
        raise not_numbers
    try:
        leaves = _leaf_types(inputs, raw.ndim)
    except TypeError as exc:  # pragma: no cover - numpy already proved it rectangular
        raise not_numbers from exc
    if not leaves <= {int, float}:
        raise not_numbers
    target: np.dtype[Any] = np.dtype(_JSON_DTYPES[dtype_name])
    if target.kind in "iu":
        info = np.iinfo(target)
        if raw.dtype.kind == "f" or raw.min() < info.min or raw.max() > info.max:
            raise _HttpError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "wrong_dtype",
                f"inputs are not all {dtype_name} integers",
            )
    elif raw.dtype.kind == "f" and not (
        np.isfinite(raw).all() and float(np.abs(raw).max()) <= _FLOAT32_MAX
    ):
        # 1e400 parses as inf and 1e39 overflows float32 to inf: say so, do not compute.
        raise _HttpError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "not_finite",
            "inputs contain values outside the float32 range",
        )
    return raw.astype(target)


def _array_from_npy(body: bytes) -> np.ndarray:
    try:
        # allow_pickle=False: a .npy body must never be able to run code.
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError/... on garbage
        # A fixed message: numpy's own quotes the (attacker's) header back.
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "bad_npy", "body is not a .npy array (numpy format 1-3)"
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_npy", "body is not a single .npy array")
    # Valid .npy variants the interpreter does not take as is: big-endian data would be
    # refused as a "wrong" float32/int8, and a Fortran-order array must be C-contiguous.
    if arr.dtype.kind in "iuf" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
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
            except _HttpError as exc:
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
        except _HttpError as exc:
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
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        if self.path != "/v1/health":
            raise _HttpError(HTTPStatus.NOT_FOUND, "not_found", "no such route")
        info = self.server.predictor.active
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
            _HttpError: chunked, missing, malformed, repeated or over the limit; all of
                them close the connection, since the body stays unread.
        """
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send Content-Length, not chunked"
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self.close_connection = True
            raise _HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length is required"
            )
        # Two Content-Length headers: which one frames the body is ambiguous (the
        # request-smuggling class), so neither is trusted.
        digits = values[0].strip(" \t")
        if len(values) > 1 or not _LENGTH_RE.fullmatch(digits):
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_length", "invalid Content-Length")
        limit = self.server.max_body_bytes
        significant = digits.lstrip("0")
        if len(significant) > _MAX_LENGTH_DIGITS or int(significant or "0") > limit:
            # Do not read (or buffer) the body: answer and drop the connection.
            self.close_connection = True
            raise _HttpError(
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
            raise _HttpError(
                HTTPStatus.BAD_REQUEST, "short_body", "body shorter than Content-Length"
            )
        return body

    def _post(self) -> None:
        if self.path != "/v1/infer":
            self.close_connection = True
            raise _HttpError(HTTPStatus.NOT_FOUND, "not_found", "no such route")
        body = self._read_body()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            x = _array_from_json(body)
        elif ctype in _NPY_TYPES:
            x = _array_from_npy(body)
        else:
            raise _HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json or application/x-npy",
            )
        try:
            out, version = self.server.predictor.predict_versioned(x)
        except RequestError as exc:
            raise _HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, exc.code, exc.message) from exc
        except InferenceError as exc:
            status = (
                HTTPStatus.SERVICE_UNAVAILABLE
                if exc.code == "no_model"
                else HTTPStatus.INTERNAL_SERVER_ERROR
            )
            raise _HttpError(status, exc.code, exc.message) from exc
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not block shutdown
    # Re-binding right after a restart must not fail on TIME_WAIT sockets.
    allow_reuse_address = True
    # A burst past the connection cap should be accepted and answered 503, not left to
    # SYN retries in a 5-deep kernel queue.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        predictor: Predictor,
        *,
        max_body_bytes: int,
        max_connections: int,
        request_timeout: float,
    ) -> None:
        self.predictor = predictor
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        # One slot per connection thread; taken in the accept loop, so the cap is exact.
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        self._last_refused_log = -math.inf
        super().__init__(address, _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot would never come back
            self._slots.release()
            raise

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        """Answer 503 and close, from the accept loop, without ever blocking it."""
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refused_log >= _REFUSED_LOG_INTERVAL:
            self._last_refused_log = now
            logger.warning(
                "inference server at its connection cap: refusing connections (%d refused so far)",
                self.refused,
            )
        if isinstance(request, socket.socket):
            with contextlib.suppress(OSError):
                # A new socket's send buffer is empty, so this small write completes
                # without waiting; non-blocking makes sure of it.
                request.setblocking(False)
                request.send(_BUSY_RESPONSE)
        self.shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # The stdlib prints a traceback to stderr; log it instead (no request data in it).
        logger.exception("error serving a connection from %s", client_address)


class InferenceServer:
    """The loopback HTTP server, run on a background thread.

    Args:
        predictor: What serves the requests.
        host: A loopback address (``127.0.0.1``, ``::1`` or ``localhost``).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        max_body_bytes: Largest accepted request body.
        max_connections: Connections served at once (one thread each); past it, new
            connections get ``503`` and are closed.
        request_timeout: Seconds a connection has to deliver each complete request
            (headers and body), counted from when the server starts waiting for it;
            also the longest an idle keep-alive connection is kept, and the timeout of
            each write of a response.

    Raises:
        ConfigError: ``host`` is not a loopback address, or a limit is not positive.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ConfigError(f"the inference server binds to loopback only, not {host!r}")
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be >= 1, not {max_body_bytes}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, not {max_connections}")
        if not (math.isfinite(request_timeout) and request_timeout > 0):
            raise ConfigError(f"request_timeout must be a positive number, not {request_timeout}")
        self._predictor = predictor
        self._address = ("127.0.0.1" if host == "localhost" else host, port)
        self._max_body_bytes = max_body_bytes
        self._max_connections = max_connections
        self._request_timeout = float(request_timeout)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8470``."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def refused_connections(self) -> int:
        """Connections refused with 503 because every slot was taken (since :meth:`start`)."""
        return self._server.refused if self._server is not None else 0

    def start(self) -> None:
        """Bind and start serving on a daemon thread.

        Raises:
            ConfigError: the port cannot be bound.
        """
        try:
            self._server = _Server(
                self._address,
                self._predictor,
                max_body_bytes=self._max_body_bytes,
                max_connections=self._max_connections,
                request_timeout=self._request_timeout,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot bind {self._address[0]}:{self._address[1]}: {exc.strerror}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="fedge-http",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )
        self._thread.start()
        logger.info("inference server listening on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
