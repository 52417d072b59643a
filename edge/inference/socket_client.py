"""A minimal client of the inference socket (:mod:`edge.inference.socket_server`).

Keeps one connection open (keep-alive) and reconnects lazily after an error closed it.
Not thread-safe: use one client per thread.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.socket_server import (
    DTYPE_CODES,
    HEADER_SIZE,
    RESPONSE_MAGIC,
    STATUS_OK,
    encode_request,
)

__all__ = ["SocketClient", "SocketClientError"]

_HEADER = struct.Struct(">4sBBBBI")


class SocketClientError(Exception):
    """The server answered an error frame (``status``, ``code``, ``message``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("server closed the connection")
        got += k
    return bytes(buf)


def read_response(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """Read one response frame: ``(status, dtype code, ndim, body)``."""
    magic, status, dtype_code, ndim, _reserved, length = _HEADER.unpack(
        _recv_exact(sock, HEADER_SIZE)
    )
    if magic != RESPONSE_MAGIC:
        raise ConnectionError("response does not start with FEO1")
    return status, dtype_code, ndim, _recv_exact(sock, length)


def decode_error(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of an error frame's body."""
    (n,) = struct.unpack_from(">H", body, 0)
    code = body[2 : 2 + n].decode("ascii", "replace")
    (m,) = struct.unpack_from(">H", body, 2 + n)
    return code, body[4 + n : 4 + n + m].decode("utf-8", "replace")


def decode_ok(dtype_code: int, ndim: int, body: bytes) -> tuple[np.ndarray, str]:
    """``(array, version)`` of an ok frame's body."""
    (n,) = struct.unpack_from(">H", body, 0)
    version = body[2 : 2 + n].decode()
    dims = struct.unpack_from(f">{ndim}I", body, 2 + n)
    dtype = DTYPE_CODES[dtype_code]
    arr = np.frombuffer(body, dtype=dtype, offset=2 + n + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("=")), version


class SocketClient:
    """``SocketClient(path).predict(array) -> (output, model_version)``.

    Raises (from :meth:`predict`):
        SocketClientError: the server answered an error frame.
        OSError: the socket cannot be reached or broke.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def send_raw(self, frame: bytes) -> tuple[int, int, int, bytes]:
        """Send arbitrary bytes and read one response frame (for tests)."""
        sock = self._connect()
        try:
            try:
                sock.sendall(frame)
            except OSError as exc:
                # A server that refuses the connection (busy) or a request (a fatal frame
                # error) answers and closes; its answer may still be waiting to be read.
                try:
                    answer = read_response(sock)
                except OSError:
                    raise exc from None
                self.close()
                return answer
            return read_response(sock)
        except OSError:
            self.close()
            raise

    def predict(self, array: Any) -> tuple[np.ndarray, str]:
        status, dtype_code, ndim, body = self.send_raw(encode_request(np.asarray(array)))
        if status != STATUS_OK:
            code, message = decode_error(body)
            if code in ("busy", "timeout", "body_too_large") or code.startswith("bad_"):
                self.close()  # the server closes the connection after these
            raise SocketClientError(status, code, message)
        return decode_ok(dtype_code, ndim, body)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SocketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
