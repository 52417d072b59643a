"""Loopback HTTP endpoint for local inference (stdlib ``ThreadingHTTPServer``, no extra deps).

Routes:

* ``GET /v1/health`` → ``200 {"status": "ok", "model": {...version, shapes...}}``, or
  ``503 {"status": "no_model"}`` before a model is active.
* ``POST /v1/infer`` with ``Content-Type: application/json`` and body
  ``{"inputs": [[...]]}`` (numbers; ``"dtype": "int8"`` to send already-quantized values),
  or with ``Content-Type: application/x-npy`` (or ``application/octet-stream``) and a
  ``.npy`` file as body. The answer is JSON ``{"model_version", "shape", "outputs"}``; with
  ``Accept: application/x-npy`` it is a ``.npy`` body and an ``X-Model-Version`` header.

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status for the client's
mistakes (400 bad body, 404, 405, 411 no length, 413 too large, 415 content type,
422 wrong shape/dtype) and 503 when no model is active. A handler never lets an exception
reach the server loop, so one bad request cannot stop the service. The server binds to a
loopback address only: it has no authentication, so it must not face a network.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edge.inference.predictor import Predictor
from shared.errors import ConfigError, InferenceError, RequestError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "InferenceServer"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_NPY_TYPES = ("application/x-npy", "application/octet-stream")
_JSON_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid input value")


def _array_from_json(body: bytes) -> np.ndarray:
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "bad_json", f"body is not valid JSON: {exc}"
        ) from exc
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_json", 'expected an object {"inputs": [...]}')
    dtype_name = doc.get("dtype", "float32")
    if dtype_name not in _JSON_DTYPES:
        raise _HttpError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "wrong_dtype",
            f"dtype must be one of {', '.join(_JSON_DTYPES)}",
        )
    try:
        raw = np.asarray(doc["inputs"])
    except (ValueError, TypeError, RecursionError) as exc:  # ragged or absurdly nested lists
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "bad_inputs", f"inputs is not an array: {exc}"
        ) from exc
    # JSON numbers only: strings, booleans, nulls and objects are not silently converted.
    if raw.dtype.kind not in "iuf" or raw.size == 0:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "bad_inputs", "inputs must be a non-empty array of numbers"
        )
    target: np.dtype[Any] = np.dtype(_JSON_DTYPES[dtype_name])
    if target.kind in "iu":
        info = np.iinfo(target)
        if raw.dtype.kind == "f" or raw.min() < info.min or raw.max() > info.max:
            raise _HttpError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "wrong_dtype",
                f"inputs are not all {dtype_name} integers",
            )
    return raw.astype(target)


def _array_from_npy(body: bytes) -> np.ndarray:
    try:
        # allow_pickle=False: a .npy body must never be able to run code.
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError/... on garbage
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "bad_npy", f"body is not a .npy array: {exc}"
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_npy", "body is not a single .npy array")
    return arr


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
    # Headers and body go out as two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms per request on Linux).
    disable_nagle_algorithm = True
    server_version = "fedge-edge"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(
        self, status: HTTPStatus, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _error(self, status: HTTPStatus, code: str, message: str) -> None:
        self._json(status, {"error": {"code": code, "message": message}})

    def _guard(self, route: Any) -> None:
        try:
            route()
        except _HttpError as exc:
            self._error(exc.status, exc.code, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # last resort: log, answer 500, keep the server alive
            logger.exception("unhandled error serving %s %s", self.command, self.path)
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client may already be gone
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "internal error")

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # the body (if any) was not read
        self._error(
            HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"{self.command} not allowed"
        )

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _get(self) -> None:
        if self.path == "/v1/infer":
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "use POST")
        if self.path != "/v1/health":
            raise _HttpError(HTTPStatus.NOT_FOUND, "not_found", f"no route {self.path}")
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

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "send Content-Length, not chunked"
            )
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            raise _HttpError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length is required"
            )
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_length", "invalid Content-Length")
        limit = self.server.max_body_bytes
        if length > limit:
            # Do not read (or buffer) the body: answer and drop the connection.
            self.close_connection = True
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"body of {length} bytes is over the {limit}-byte limit",
            )
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
            raise _HttpError(HTTPStatus.NOT_FOUND, "not_found", f"no route {self.path}")
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

    def __init__(self, address: tuple[str, int], predictor: Predictor, max_body_bytes: int) -> None:
        self.predictor = predictor
        self.max_body_bytes = max_body_bytes
        super().__init__(address, _Handler)


class InferenceServer:
    """The loopback HTTP server, run on a background thread.

    Args:
        predictor: What serves the requests.
        host: A loopback address (``127.0.0.1``, ``::1`` or ``localhost``).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
        max_body_bytes: Largest accepted request body.

    Raises:
        ConfigError: ``host`` is not a loopback address.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ConfigError(f"the inference server binds to loopback only, not {host!r}")
        self._predictor = predictor
        self._address = ("127.0.0.1" if host == "localhost" else host, port)
        self._max_body_bytes = max_body_bytes
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

    def start(self) -> None:
        """Bind and start serving on a daemon thread.

        Raises:
            ConfigError: the port cannot be bound.
        """
        try:
            self._server = _Server(self._address, self._predictor, self._max_body_bytes)
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
