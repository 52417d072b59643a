"""A minimal client of the inference socket (:mod:`edge.inference.socket_server`).

Keeps one connection open (keep-alive) and reconnects lazily after an error closed it.
Not thread-safe: use one client per thread. The request is written with one ``sendmsg``
(header and dims, then the tensor's own buffer) and the response read into a buffer kept
across requests, so a request allocates little beyond its output array.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.frames import (
    CODE_OF_DTYPE,
    DTYPE_CODES,
    FLAG_MODEL_NAME,
    HEADER,
    HEADER_SIZE,
    MAX_NDIM,
    MODEL_NAME_RE,
    REQUEST_MAGIC,
    RESPONSE_MAGIC,
    STATUS_OK,
)

__all__ = ["SocketClient", "SocketClientError", "decode_error", "decode_ok", "read_response"]

_DIMS = [struct.Struct(f">{n}I") for n in range(MAX_NDIM + 1)]
# Error codes after which the server closes the connection (docs/protocol.md §14).
_CLOSING = frozenset({"busy", "timeout", "body_too_large"})


class SocketClientError(Exception):
    """The server answered an error frame (``status``, ``code``, ``message``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("server closed the connection")
        got += k


def read_response(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """Read one response frame: ``(status, dtype code, ndim, body)``."""
    header = bytearray(HEADER_SIZE)
    _recv_into(sock, memoryview(header))
    magic, status, dtype_code, ndim, _reserved, length = HEADER.unpack(header)
    if magic != RESPONSE_MAGIC:
        raise ConnectionError("response does not start with FEO1")
    body = bytearray(length)
    _recv_into(sock, memoryview(body))
    return status, dtype_code, ndim, bytes(body)


def decode_error(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of an error frame's body."""
    (n,) = struct.unpack_from(">H", body, 0)
    code = body[2 : 2 + n].decode("ascii", "replace")
    (m,) = struct.unpack_from(">H", body, 2 + n)
    return code, body[4 + n : 4 + n + m].decode("utf-8", "replace")


def decode_ok(dtype_code: int, ndim: int, body: bytes | bytearray) -> tuple[np.ndarray, str]:
    """``(array, version)`` of an ok frame's body (the array is a copy)."""
    (n,) = struct.unpack_from(">H", body, 0)
    version = bytes(body[2 : 2 + n]).decode()
    dims = _DIMS[ndim].unpack_from(body, 2 + n)
    dtype = DTYPE_CODES[dtype_code]
    arr = np.frombuffer(body, dtype=dtype, offset=2 + n + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True), version


class SocketClient:
    """``SocketClient(path).predict(array, model=None) -> (output, model_version)``.

    Raises (from :meth:`predict`):
        SocketClientError: the server answered an error frame.
        OSError: the socket cannot be reached or broke.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._header = bytearray(HEADER_SIZE)
        self._body = bytearray(4096)
        self._heads: dict[tuple[int, tuple[int, ...], str | None], bytes] = {}

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
        return self._exchange([frame], copy=True)

    def _exchange(self, parts: list[Any], *, copy: bool) -> tuple[int, int, int, Any]:
        sock = self._connect()
        try:
            try:
                total = sum(memoryview(p).nbytes for p in parts)
                sent = sock.sendmsg(parts)
                if sent < total:
                    sock.sendall(b"".join(bytes(memoryview(p).cast("B")) for p in parts)[sent:])
            except OSError as exc:
                # A server that refuses the connection (busy) or a request (a fatal frame
                # error) answers and closes; its answer may still be waiting to be read.
                try:
                    answer = read_response(sock)
                except OSError:
                    raise exc from None
                self.close()
                return answer
            return self._read(sock, copy=copy)
        except OSError:
            self.close()
            raise

    def _read(self, sock: socket.socket, *, copy: bool) -> tuple[int, int, int, Any]:
        _recv_into(sock, memoryview(self._header))
        magic, status, dtype_code, ndim, _reserved, length = HEADER.unpack(self._header)
        if magic != RESPONSE_MAGIC:
            raise ConnectionError("response does not start with FEO1")
        if len(self._body) < length:
            self._body = bytearray(max(length, 2 * len(self._body)))
        view = memoryview(self._body)[:length]
        _recv_into(sock, view)
        return status, dtype_code, ndim, bytes(view) if copy else view

    def _head(self, arr: np.ndarray, code: int, model: str | None) -> bytes:
        key = (code, arr.shape, model)
        head = self._heads.get(key)
        if head is None:
            prefix, flags = b"", 0
            if model is not None:
                if not MODEL_NAME_RE.fullmatch(model):
                    raise ValueError("model name must match [a-z0-9][a-z0-9_-]{0,62}")
                prefix, flags = bytes([len(model)]) + model.encode("ascii"), FLAG_MODEL_NAME
            dims = _DIMS[arr.ndim].pack(*arr.shape)
            length = len(prefix) + len(dims) + arr.nbytes
            head = HEADER.pack(REQUEST_MAGIC, 1, code, arr.ndim, flags, length) + prefix + dims
            if len(self._heads) > 64:
                self._heads.clear()
            self._heads[key] = head
        return head

    def predict(self, array: Any, model: str | None = None) -> tuple[np.ndarray, str]:
        """Run one request on ``model`` (None: the server's default model).

        Raises:
            SocketClientError: an error frame (e.g. ``unknown_model``, ``wrong_shape``).
            ValueError: a dtype, rank or model name that cannot be framed.
            OSError: the connection failed.
        """
        arr = np.asarray(array)
        code = CODE_OF_DTYPE.get(arr.dtype.name)
        if code is None:
            raise ValueError(f"dtype {arr.dtype.name} cannot be sent: use float32, int8 or uint8")
        if not 1 <= arr.ndim <= MAX_NDIM:
            raise ValueError(f"ndim must be 1..{MAX_NDIM}")
        if not (arr.flags.c_contiguous and arr.dtype == DTYPE_CODES[code]):  # LE, C order
            arr = np.ascontiguousarray(arr, dtype=DTYPE_CODES[code])
        head = self._head(arr, code, model)
        status, dtype_code, ndim, body = self._exchange([head, arr.data.cast("B")], copy=False)
        if status != STATUS_OK:
            code_, message = decode_error(bytes(body))
            if code_ in _CLOSING or (code_.startswith("bad_") and code_ != "bad_name"):
                self.close()  # the server closes the connection after these
            raise SocketClientError(status, code_, message)
        return decode_ok(dtype_code, ndim, body)

    def close(self) -> None:
        """Close the connection (the next request reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SocketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
