"""Local inference over a Unix domain socket: length-prefixed binary frames, no HTTP.

A faster sibling of :mod:`edge.inference.server` for local applications; the byte layout
is in :mod:`edge.inference.frames` and ``docs/protocol.md`` section 14. A request may name
one of the served models (flag bit 0); one that names none goes to the default model.

Validation of shape and dtype against the model is the :class:`Predictor`'s, as for HTTP,
so both endpoints answer the same error codes. Limits: the header is read first and the
body length checked against ``max_body_bytes`` before the server waits for the body or
grows its buffer for it (a fixed 16 KiB buffer takes whatever already arrived); each request
must arrive whole within ``request_timeout`` of the server starting to wait for it (so
this also bounds keep-alive idling); at most ``max_connections`` connections are served at
once (one thread each), a connection past the cap gets a ``busy`` error frame and is
closed.

The request path is written for latency (issue 11: within 2x of a raw invoke). Each
connection thread uses a *blocking* socket with kernel timeouts (``SO_RCVTIMEO``,
``SO_SNDTIMEO``) instead of Python's socket timeouts, which cost a ``poll`` before every
``recv``; it reads greedily into a buffer kept per connection (header and body usually
in one ``recv``), hands the interpreter a ``np.frombuffer`` view of the body (no copy),
and writes the response as one ``sendmsg`` of a cached header (per model version and
output shape) and the output tensor. The deadline still covers the whole request: a frame
that arrives in pieces is read with the kernel timeout set to the time left. Measured by
``benchmarks/edge_shadow.py`` beside the previous server (asyncio-free too, but with
Python socket timeouts and per-request copies): see its JSON.

The socket file is created mode 0600 inside a directory of mode 0700: only the device's
user can talk to it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import stat
import threading
import time
from pathlib import Path

from edge.inference.catalog import ModelSet
from edge.inference.frames import (
    DTYPE_CODES,
    HEADER_SIZE,
    MAX_NDIM,
    REQUEST_MAGIC,
    RESPONSE_MAGIC,
    STATUS_CLIENT_ERROR,
    STATUS_OK,
    STATUS_SERVER_ERROR,
    FrameError,
    Request,
    encode_error,
    encode_request,
    encode_response,
    parse_body,
    parse_request,
)
from edge.inference.predictor import Predictor
from edge.inference.server import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
)
from edge.inference.socket_conn import Connection, RequestDeadline
from shared.errors import ConfigError, InferenceError, RequestError

__all__ = [
    "DTYPE_CODES",
    "HEADER_SIZE",
    "MAX_NDIM",
    "REQUEST_MAGIC",
    "RESPONSE_MAGIC",
    "STATUS_CLIENT_ERROR",
    "STATUS_OK",
    "STATUS_SERVER_ERROR",
    "FrameError",
    "Request",
    "SocketServer",
    "encode_error",
    "encode_request",
    "encode_response",
    "parse_request",
]

logger = logging.getLogger(__name__)

_SUN_PATH_MAX = 108
"""``sizeof(sun_path)`` on Linux: a Unix socket path must be shorter."""

_REFUSED_LOG_INTERVAL = 60.0


class SocketServer:
    """The Unix-socket inference server, run on a background thread.

    Args:
        predictor: What serves the requests: one predictor (the default model), or a
            :class:`ModelSet` of named ones.
        path: The socket file. Its directory is created (mode 0700) if missing; a stale
            socket file is replaced, a live one (a server answers) is refused.
        max_body_bytes: Largest accepted request body (after the 12-byte header).
        max_connections: Connections served at once; past it, ``busy`` and close.
        request_timeout: Seconds a connection has to deliver each whole request, counted
            from when the server starts waiting for it (also the keep-alive idle timeout
            and the timeout of each write of a response).

    Raises:
        ConfigError: a limit is not positive.
    """

    def __init__(
        self,
        predictor: Predictor | ModelSet,
        path: str | Path,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be >= 1, not {max_body_bytes}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, not {max_connections}")
        if not (math.isfinite(request_timeout) and request_timeout > 0):
            raise ConfigError(f"request_timeout must be a positive number, not {request_timeout}")
        self._models = predictor if isinstance(predictor, ModelSet) else ModelSet(predictor)
        self.path = Path(path)
        self._max_body_bytes = max_body_bytes
        self._max_connections = max_connections
        self._request_timeout = float(request_timeout)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.refused = 0
        self._last_refused_log = -math.inf

    @property
    def refused_connections(self) -> int:
        """Connections refused with ``busy`` since creation."""
        return self.refused

    # --- lifecycle --------------------------------------------------------------------

    def _prepare_path(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
        # mkdir honours the umask; make sure of 0700 on a directory we created or own.
        st = parent.stat()
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(parent, 0o700)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ConfigError(f"cannot probe {self.path}: {exc.strerror}") from exc
            self.path.unlink(missing_ok=True)  # stale: nobody listens
            return
        finally:
            probe.close()
        raise ConfigError(f"{self.path} is in use by a running server")

    def start(self) -> None:
        """Bind and start serving on a daemon thread.

        Raises:
            ConfigError: the path is taken by a live server or not a socket, or cannot be
                bound.
        """
        self._prepare_path()
        # Bind and listen under a private name, then rename into place: a client that waits
        # for the path to appear never finds a socket that is not listening yet (refused).
        staging = self.path.with_name(f".{os.getpid()}.uds")
        if len(os.fsencode(staging)) >= _SUN_PATH_MAX:
            staging = self.path  # no room for a longer name: bind in place
        staging.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window with wider permissions
        try:
            sock.bind(str(staging))
            os.chmod(staging, 0o600)
            sock.listen(64)
            if staging != self.path:
                os.replace(staging, self.path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                staging.unlink()
            raise ConfigError(f"cannot bind {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old_umask)
        sock.settimeout(0.2)  # the accept loop polls the stop flag
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="fedge-uds", daemon=True)
        self._thread.start()
        logger.info("inference socket listening on %s", self.path)

    def stop(self) -> None:
        """Stop serving, close open connections and remove the socket file."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # --- serving ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                logger.exception("accept failed on %s", self.path)
                time.sleep(0.05)
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            try:
                threading.Thread(
                    target=self._serve_connection, args=(conn,), name="fedge-uds-conn", daemon=True
                ).start()
            except BaseException:
                self._slots.release()
                conn.close()
                raise

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refused_log >= _REFUSED_LOG_INTERVAL:
            self._last_refused_log = now
            logger.warning(
                "inference socket at its connection cap: refusing (%d refused so far)",
                self.refused,
            )
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(encode_error(STATUS_SERVER_ERROR, "busy", "too many connections; retry"))
        conn.close()

    def _serve_connection(self, sock: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(sock)
        try:
            conn = Connection(sock, self._request_timeout)
            while not self._stopping.is_set() and self._serve_one(conn):
                pass
        except (ConnectionError, OSError):
            pass  # the client went away (or stopped reading): nothing to answer
        except Exception:  # last resort: never let a connection kill anything else
            logger.exception("unhandled error on the inference socket")
        finally:
            with self._conns_lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()
            self._slots.release()

    def _serve_one(self, conn: Connection) -> bool:
        """Serve one request; False when the connection must close."""
        try:
            frame = conn.read_frame(self._max_body_bytes)
            if frame is None:
                return False  # clean close between requests
            request = parse_body(*frame)
        except RequestDeadline:
            with contextlib.suppress(OSError):
                conn.send(
                    encode_error(
                        STATUS_CLIENT_ERROR,
                        "timeout",
                        f"request not received within {self._request_timeout:g} s",
                    )
                )
            return False
        except FrameError as exc:
            conn.send(encode_error(STATUS_CLIENT_ERROR, exc.code, exc.message))
            return not exc.fatal
        predictor = self._models.get(request.model)
        if predictor is None:
            conn.send(
                encode_error(
                    STATUS_CLIENT_ERROR, "unknown_model", "no model of that name is served"
                )
            )
            return True
        try:
            out, version = predictor.predict_versioned(request.array)
        except RequestError as exc:
            conn.send(encode_error(STATUS_CLIENT_ERROR, exc.code, exc.message))
            return True
        except InferenceError as exc:
            conn.send(encode_error(STATUS_SERVER_ERROR, exc.code, exc.message))
            return True
        except Exception:
            logger.exception("unhandled error serving a socket inference request")
            conn.send(encode_error(STATUS_SERVER_ERROR, "internal", "internal error"))
            return True
        try:
            conn.send_ok(out, version)
        except ValueError:
            conn.send(encode_error(STATUS_SERVER_ERROR, "internal", "output cannot be framed"))
        return True
