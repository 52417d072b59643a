"""Local inference over a Unix domain socket: length-prefixed binary frames, no HTTP.

A faster sibling of :mod:`edge.inference.server` for local applications (see
``docs/protocol.md`` section 14 for the byte layout). Request frame::

    magic b"FEI1" | u8 version=1 | u8 dtype | u8 ndim (1..8) | u8 flags=0 | u32 body_length
    body: ndim x u32 dims | raw tensor bytes (C order, little-endian)

with ``body_length == 4 * ndim + nbytes`` exactly (all integers big-endian). Response::

    magic b"FEO1" | u8 status | u8 dtype | u8 ndim | u8 reserved | u32 body_length
    ok body:    u16 label length | UTF-8 version label | ndim x u32 dims | raw output bytes
    error body: u16 code length | ASCII code | u16 message length | UTF-8 message

Validation of shape and dtype against the active model is the :class:`Predictor`'s, as for
HTTP, so both endpoints answer the same error codes. Limits: the header is read first and
the body length checked against ``max_body_bytes`` before any body byte is read; each
request must arrive whole within ``request_timeout`` of the server starting to wait for it
(so this also bounds keep-alive idling); at most ``max_connections`` connections are
served at once (one thread each), a connection past the cap gets a ``busy`` error frame
and is closed.

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
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.predictor import Predictor
from edge.inference.server import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT,
)
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

REQUEST_MAGIC = b"FEI1"
RESPONSE_MAGIC = b"FEO1"
VERSION = 1
MAX_NDIM = 8
# magic, version|status, dtype, ndim, flags|reserved, body_length
_HEADER = struct.Struct(">4sBBBBI")
HEADER_SIZE = _HEADER.size  # 12
STATUS_OK, STATUS_CLIENT_ERROR, STATUS_SERVER_ERROR = 0, 1, 2
DTYPE_CODES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("u1"),
}
_CODE_OF_DTYPE = {dt.name: code for code, dt in DTYPE_CODES.items()}
_MAX_FIELD = 0xFFFF
_REFUSED_LOG_INTERVAL = 60.0


class FrameError(Exception):
    """A request frame that cannot be accepted; ``code`` is the wire error code.

    ``fatal`` means the connection cannot continue (framing is lost or the body was not
    read), so the server closes it after the error frame.
    """

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal


@dataclass(frozen=True)
class Request:
    """A parsed request: the input tensor (C-contiguous, native byte order)."""

    array: np.ndarray


@dataclass(frozen=True)
class _Header:
    dtype: np.dtype[Any]
    ndim: int
    body_length: int


def _parse_header(header: bytes, max_body_bytes: int | None = None) -> _Header:
    """Check the 12-byte header. Every failure here is fatal (framing cannot be trusted)."""
    if len(header) != HEADER_SIZE:
        raise FrameError("bad_frame", f"header must be {HEADER_SIZE} bytes", fatal=True)
    magic, version, dtype_code, ndim, flags, body_length = _HEADER.unpack(header)
    if magic != REQUEST_MAGIC:
        raise FrameError("bad_magic", "frame does not start with FEI1", fatal=True)
    if version != VERSION:
        raise FrameError("bad_version", "unsupported frame version: use 1", fatal=True)
    if flags != 0:
        raise FrameError("bad_flags", "flags must be 0", fatal=True)
    if dtype_code not in DTYPE_CODES:
        raise FrameError(
            "wrong_dtype", "dtype code must be 0 (float32), 1 (int8) or 2 (uint8)", fatal=True
        )
    if not 1 <= ndim <= MAX_NDIM:
        raise FrameError("bad_ndim", f"ndim must be 1..{MAX_NDIM}", fatal=True)
    if max_body_bytes is not None and body_length > max_body_bytes:
        raise FrameError(
            "body_too_large", f"body is over the {max_body_bytes}-byte limit", fatal=True
        )
    if body_length < 4 * ndim:
        raise FrameError("bad_length", "body_length is shorter than the dims", fatal=True)
    return _Header(DTYPE_CODES[dtype_code], ndim, body_length)


def parse_request(header: bytes, body: bytes) -> Request:
    """Parse one request frame (header and body); a pure function.

    Raises:
        FrameError: anything malformed, with a wire error code; never another exception.
    """
    h = _parse_header(bytes(header))
    if len(body) != h.body_length:
        raise FrameError("bad_length", "body is not body_length bytes", fatal=True)
    dims = struct.unpack_from(f">{h.ndim}I", body, 0)
    count = math.prod(dims)
    if count == 0:
        raise FrameError("wrong_shape", "every dimension must be at least 1")
    if 4 * h.ndim + count * h.dtype.itemsize != h.body_length:
        # The body was read whole, so the stream is still in sync: not fatal.
        raise FrameError("bad_length", "body_length does not equal 4*ndim + tensor bytes")
    arr = np.frombuffer(body, dtype=h.dtype, count=count, offset=4 * h.ndim).reshape(dims)
    # Native byte order for the interpreter; a copy also frees the request buffer.
    return Request(arr.astype(h.dtype.newbyteorder("="), copy=True))


def encode_request(array: np.ndarray) -> bytes:
    """A request frame for ``array`` (float32, int8 or uint8; 1..8 dimensions)."""
    arr = np.asarray(array)
    code = _CODE_OF_DTYPE.get(arr.dtype.name)
    if code is None:
        raise ValueError(f"dtype {arr.dtype.name} cannot be sent: use float32, int8 or uint8")
    if not 1 <= arr.ndim <= MAX_NDIM:
        raise ValueError(f"ndim must be 1..{MAX_NDIM}")
    data = np.ascontiguousarray(arr, dtype=DTYPE_CODES[code]).tobytes()
    dims = struct.pack(f">{arr.ndim}I", *arr.shape)
    return _HEADER.pack(REQUEST_MAGIC, VERSION, code, arr.ndim, 0, len(dims) + len(data)) + (
        dims + data
    )


def encode_response(array: np.ndarray, version: str) -> bytes:
    """An ok response frame carrying ``array`` and the model version label."""
    arr = np.asarray(array)
    code = _CODE_OF_DTYPE.get(arr.dtype.name)
    if code is None or not 1 <= arr.ndim <= MAX_NDIM:
        raise ValueError(f"output {arr.dtype.name}/{arr.ndim}-d cannot be framed")
    label = version.encode()[:_MAX_FIELD]
    data = np.ascontiguousarray(arr, dtype=DTYPE_CODES[code]).tobytes()
    body = struct.pack(">H", len(label)) + label + struct.pack(f">{arr.ndim}I", *arr.shape) + data
    return _HEADER.pack(RESPONSE_MAGIC, STATUS_OK, code, arr.ndim, 0, len(body)) + body


def encode_error(status: int, code: str, message: str) -> bytes:
    """An error response frame (status 1 client error, 2 server error)."""
    c = code.encode("ascii", "replace")[:_MAX_FIELD]
    m = message.encode()[:_MAX_FIELD]
    body = struct.pack(">H", len(c)) + c + struct.pack(">H", len(m)) + m
    return _HEADER.pack(RESPONSE_MAGIC, status, 0, 0, 0, len(body)) + body


class _Deadline(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    """``n`` bytes, or None on a clean EOF before the first; _Deadline when time runs out."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        sock.settimeout(remaining)
        try:
            k = sock.recv_into(view[got:])
        except TimeoutError as exc:
            raise _Deadline from exc
        if k == 0:
            if got == 0:
                return None
            raise ConnectionError("peer closed mid-frame")
        got += k
    return bytes(buf)


class SocketServer:
    """The Unix-socket inference server, run on a background thread.

    Args:
        predictor: What serves the requests.
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
        predictor: Predictor,
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
        self._predictor = predictor
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
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window with wider permissions
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(64)
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

    def _serve_connection(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)
        try:
            while not self._stopping.is_set() and self._serve_one(conn):
                pass
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to answer
        except Exception:  # last resort: never let a connection kill anything else
            logger.exception("unhandled error on the inference socket")
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()

    def _send(self, conn: socket.socket, frame: bytes) -> None:
        conn.settimeout(self._request_timeout)
        conn.sendall(frame)

    def _serve_one(self, conn: socket.socket) -> bool:
        """Serve one request; False when the connection must close."""
        deadline = time.monotonic() + self._request_timeout
        try:
            header = _recv_exact(conn, HEADER_SIZE, deadline)
            if header is None:
                return False  # clean close between requests
            h = _parse_header(header, self._max_body_bytes)
            body = _recv_exact(conn, h.body_length, deadline)
            if body is None:
                raise ConnectionError("peer closed mid-frame")
            request = parse_request(header, body)
        except _Deadline:
            with contextlib.suppress(OSError):
                self._send(
                    conn,
                    encode_error(
                        STATUS_CLIENT_ERROR,
                        "timeout",
                        f"request not received within {self._request_timeout:g} s",
                    ),
                )
            return False
        except FrameError as exc:
            self._send(conn, encode_error(STATUS_CLIENT_ERROR, exc.code, exc.message))
            return not exc.fatal
        try:
            out, version = self._predictor.predict_versioned(request.array)
            frame = encode_response(out, version)
        except RequestError as exc:
            frame = encode_error(STATUS_CLIENT_ERROR, exc.code, exc.message)
        except InferenceError as exc:
            frame = encode_error(STATUS_SERVER_ERROR, exc.code, exc.message)
        except Exception:
            logger.exception("unhandled error serving a socket inference request")
            frame = encode_error(STATUS_SERVER_ERROR, "internal", "internal error")
        self._send(conn, frame)
        return True
