"""Loopback HTTP endpoint for local inference (stdlib ``ThreadingHTTPServer``, no extra deps).

Routes:

* ``GET /v1/health`` → ``200 {"status": "ok", "model": {...version, shapes...}}``, or
  ``503 {"status": "no_model"}`` before a model is active (about the default model).
* ``GET /v1/models`` → ``200 {"default": name, "models": {name: {...} | null}}``.
* ``POST /v1/infer`` with ``Content-Type: application/json`` and body
  ``{"inputs": [[...]]}`` (numbers; ``"dtype": "int8"`` to send already-quantized values),
  or with ``Content-Type: application/x-npy`` (or ``application/octet-stream``) and a
  ``.npy`` file as body. The answer is JSON ``{"model_version", "shape", "outputs"}``; with
  ``Accept: application/x-npy`` it is a ``.npy`` body and an ``X-Model-Version`` header.
* ``POST /v1/models/{name}/predict``: the same, on the model served under ``name`` (see
  :class:`~edge.inference.ModelSet`); ``/v1/infer`` is the default model. An unknown
  name is ``404 unknown_model``.

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
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from edge.inference.catalog import ModelSet
from edge.inference.http_handler import Handler
from edge.inference.predictor import Predictor
from shared.errors import ConfigError

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
        models: ModelSet,
        *,
        max_body_bytes: int,
        max_connections: int,
        request_timeout: float,
    ) -> None:
        self.models = models
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        # One slot per connection thread; taken in the accept loop, so the cap is exact.
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        self._last_refused_log = -math.inf
        super().__init__(address, Handler)

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
        predictor: What serves the requests: one predictor (the default model), or a
            :class:`ModelSet` of named ones.
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
        predictor: Predictor | ModelSet,
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
        self._models = predictor if isinstance(predictor, ModelSet) else ModelSet(predictor)
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
                self._models,
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
