"""One connection of the inference socket: buffered frame reads and kernel timeouts.

Split from :mod:`edge.inference.socket_server` (which accepts, bounds and dispatches). A
:class:`Connection` reads a request with as few syscalls as possible and within the
request deadline, and writes an answer with one ``sendmsg``.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

import numpy as np

from edge.inference.frames import (
    CODE_OF_DTYPE,
    DTYPE_CODES,
    HEADER_SIZE,
    MAX_NDIM,
    Header,
    ok_prefix,
    parse_header,
)

__all__ = ["Connection", "RequestDeadline"]

_LITTLE = sys.byteorder == "little"
_MAX_CACHED_PREFIXES = 64  # (version, dtype, shape) combinations remembered per connection
_INITIAL_BUFFER = 16 * 1024  # a 1x28x28 float request is 3 KiB; larger ones grow it


class RequestDeadline(Exception):
    """The request did not arrive whole before its deadline (or the connection idled)."""


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1e6))


class Connection:
    """One client connection: its buffers, kernel timeouts and response-header cache."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        sock.setblocking(True)
        self._full = _timeval(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._full)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._full)
        self._shortened = False  # SO_RCVTIMEO currently below the full timeout
        # Requests are read greedily into one buffer: a frame usually arrives whole, so one
        # recv takes header and body. Bytes past the frame (a client that pipelines) stay
        # for the next request. The buffer only grows once a header allowed the size.
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.prefixes: dict[tuple[str, int, tuple[int, ...]], bytes] = {}

    def _recv(self, *, deadline: float | None) -> None:
        """One recv into the free end of the buffer; None deadline: the idle wait."""
        sock = self.sock
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestDeadline
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(max(remaining, 1e-3)))
            self._shortened = True
        try:
            k = sock.recv_into(self._view[self._end :])
        except BlockingIOError as exc:  # SO_RCVTIMEO expired
            raise RequestDeadline from exc
        if k == 0:
            raise EOFError
        self._end += k

    def _make_room(self, total: int) -> None:
        """Room for ``total`` bytes from ``_start`` (moving or growing the buffer)."""
        if self._start + total <= len(self._buf):
            return
        pending = bytes(self._view[self._start : self._end])  # a copy: the regions overlap
        if total > len(self._buf):
            # A new buffer, never a resize: the last request's array may still view the old.
            self._buf = bytearray(max(total, 2 * len(self._buf)))
            self._view = memoryview(self._buf)
        self._buf[: len(pending)] = pending
        self._start, self._end = 0, len(pending)

    def read_frame(self, max_body_bytes: int) -> tuple[Header, memoryview] | None:
        """The next request (checked header, body view); None on a clean close.

        The body view is valid until the next call.

        Raises:
            FrameError: a bad header (the body is not waited for).
            RequestDeadline: the request did not arrive whole in time.
            ConnectionError: the peer closed mid-frame.
        """
        if self._start == self._end:
            self._start = self._end = 0
        if self._shortened:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._full)
            self._shortened = False
        deadline = time.monotonic() + self.timeout
        if self._end - self._start < HEADER_SIZE:
            self._make_room(HEADER_SIZE)
            try:
                self._recv(deadline=None)  # idle: the full timeout, already set
            except EOFError:
                if self._end == self._start:
                    return None  # clean close between requests
                raise ConnectionError("peer closed mid-frame") from None
        try:
            while self._end - self._start < HEADER_SIZE:
                self._recv(deadline=deadline)
            start = self._start
            h = parse_header(self._view[start : start + HEADER_SIZE], max_body_bytes)
            total = HEADER_SIZE + h.body_length
            self._make_room(total)
            while self._end - self._start < total:
                self._recv(deadline=deadline)
        except EOFError:
            raise ConnectionError("peer closed mid-frame") from None
        start = self._start
        self._start = start + total
        return h, self._view[start + HEADER_SIZE : start + total]

    def send(self, frame: bytes) -> None:
        """Write a whole frame (an error answer)."""
        self.sock.sendall(frame)

    def send_ok(self, out: np.ndarray, version: str) -> None:
        """Write an ok answer: the cached header, then the output tensor's own bytes.

        Raises:
            ValueError: an output dtype or rank the frame cannot carry.
        """
        code = CODE_OF_DTYPE.get(out.dtype.name)
        if code is None or not 1 <= out.ndim <= MAX_NDIM:
            raise ValueError(f"output {out.dtype.name}/{out.ndim}-d cannot be framed")
        if not (_LITTLE and out.flags.c_contiguous):
            out = np.ascontiguousarray(out, dtype=DTYPE_CODES[code])
        key = (version, code, out.shape)
        prefix = self.prefixes.get(key)
        if prefix is None:
            if len(self.prefixes) >= _MAX_CACHED_PREFIXES:
                self.prefixes.clear()
            prefix = self.prefixes[key] = ok_prefix(version, code, out.shape, out.nbytes)
        data = out.data.cast("B")
        sent = self.sock.sendmsg([prefix, data])
        if sent < len(prefix) + len(data):  # a large output did not fit the send buffer
            self.sock.sendall((prefix + data.tobytes())[sent:])
