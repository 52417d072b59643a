"""The inference socket's frames (``docs/protocol.md`` §14): pure encode/parse, no I/O.

Request frame::

    magic b"FEI1" | u8 version=1 | u8 dtype | u8 ndim (1..8) | u8 flags | u32 body_length
    body: [u8 name_length | ASCII model name]   only when flags & FLAG_MODEL_NAME
          ndim x u32 dims | raw tensor bytes (C order, little-endian)

with ``body_length`` equal to the sum of the parts exactly (header integers and dims
big-endian). Without the flag, the request goes to the default model, exactly as before
the flag existed. Response::

    magic b"FEO1" | u8 status | u8 dtype | u8 ndim | u8 reserved | u32 body_length
    ok body:    u16 label length | UTF-8 version label | ndim x u32 dims | raw output bytes
    error body: u16 code length | ASCII code | u16 message length | UTF-8 message
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DTYPE_CODES",
    "FLAG_MODEL_NAME",
    "HEADER_SIZE",
    "MAX_NDIM",
    "MODEL_NAME_RE",
    "REQUEST_MAGIC",
    "RESPONSE_MAGIC",
    "STATUS_CLIENT_ERROR",
    "STATUS_OK",
    "STATUS_SERVER_ERROR",
    "FrameError",
    "Header",
    "Request",
    "encode_error",
    "encode_request",
    "encode_response",
    "ok_prefix",
    "parse_body",
    "parse_header",
    "parse_request",
]

REQUEST_MAGIC = b"FEI1"
RESPONSE_MAGIC = b"FEO1"
VERSION = 1
MAX_NDIM = 8
FLAG_MODEL_NAME = 0x01  # the body starts with a model name
_KNOWN_FLAGS = FLAG_MODEL_NAME
# magic, version|status, dtype, ndim, flags|reserved, body_length
HEADER = struct.Struct(">4sBBBBI")
HEADER_SIZE = HEADER.size  # 12
STATUS_OK, STATUS_CLIENT_ERROR, STATUS_SERVER_ERROR = 0, 1, 2
DTYPE_CODES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("u1"),
}
CODE_OF_DTYPE = {dt.name: code for code, dt in DTYPE_CODES.items()}
# The same grammar as every other identifier in fedge (device profiles, topics).
MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)
_MAX_FIELD = 0xFFFF
_DIMS = [struct.Struct(f">{n}I") for n in range(MAX_NDIM + 1)]  # no format parsing per request
_U16 = struct.Struct(">H")


class FrameError(Exception):
    """A request frame that cannot be accepted; ``code`` is the wire error code.

    ``fatal`` means the connection cannot continue (framing is lost or the body was not
    read), so the server closes it after the error frame.
    """

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal


class Request(NamedTuple):
    """A parsed request: the input tensor and the model it names (None: the default)."""

    # NamedTuple, not a frozen dataclass: built on every request, and a frozen
    # dataclass's __init__ costs about a microsecond.
    array: np.ndarray
    model: str | None = None


class Header(NamedTuple):
    """A checked request header."""

    dtype: np.dtype[Any]
    ndim: int
    flags: int
    body_length: int


def parse_header(
    header: bytes | bytearray | memoryview, max_body_bytes: int | None = None
) -> Header:
    """Check the 12-byte header. Every failure here is fatal (framing cannot be trusted).

    Raises:
        FrameError: with its wire code.
    """
    if len(header) != HEADER_SIZE:
        raise FrameError("bad_frame", f"header must be {HEADER_SIZE} bytes", fatal=True)
    magic, version, dtype_code, ndim, flags, body_length = HEADER.unpack(header)
    if magic != REQUEST_MAGIC:
        raise FrameError("bad_magic", "frame does not start with FEI1", fatal=True)
    if version != VERSION:
        raise FrameError("bad_version", "unsupported frame version: use 1", fatal=True)
    if flags & ~_KNOWN_FLAGS:
        raise FrameError("bad_flags", "flags may only have bit 0 (model name) set", fatal=True)
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
    minimum = 4 * ndim + (2 if flags & FLAG_MODEL_NAME else 0)
    if body_length < minimum:
        raise FrameError("bad_length", "body_length is shorter than the dims", fatal=True)
    return Header(DTYPE_CODES[dtype_code], ndim, flags, body_length)


def parse_body(h: Header, body: bytes | bytearray | memoryview) -> Request:
    """Parse a body of exactly ``h.body_length`` bytes; the array is a view of ``body``.

    No copy is made: the caller must not reuse ``body`` before it is done with the
    array. The body was read whole, so every error here leaves the stream in sync (not
    fatal).

    Raises:
        FrameError: with its wire code.
    """
    offset = 0
    name: str | None = None
    if h.flags & FLAG_MODEL_NAME:
        n = body[0]
        raw = bytes(body[1 : 1 + n])
        offset = 1 + n
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if not MODEL_NAME_RE.fullmatch(name):
            raise FrameError("bad_name", "model name must match [a-z0-9][a-z0-9_-]{0,62}")
        if offset + 4 * h.ndim > h.body_length:
            raise FrameError("bad_length", "body_length is shorter than name and dims")
    dims = _DIMS[h.ndim].unpack_from(body, offset)
    offset += 4 * h.ndim
    count = math.prod(dims)
    if count == 0:
        raise FrameError("wrong_shape", "every dimension must be at least 1")
    if offset + count * h.dtype.itemsize != h.body_length:
        raise FrameError("bad_length", "body_length does not equal name + 4*ndim + tensor bytes")
    arr = np.frombuffer(body, dtype=h.dtype, count=count, offset=offset).reshape(dims)
    if not h.dtype.isnative:  # pragma: no cover - big-endian hosts only
        arr = arr.astype(h.dtype.newbyteorder("="))
    return Request(arr, name)


def parse_request(header: bytes, body: bytes) -> Request:
    """Parse one request frame (header and body); a pure function.

    Raises:
        FrameError: anything malformed, with a wire error code; never another exception.
    """
    h = parse_header(bytes(header))
    if len(body) != h.body_length:
        raise FrameError("bad_length", "body is not body_length bytes", fatal=True)
    return parse_body(h, bytes(body))


def encode_request(array: np.ndarray, model: str | None = None) -> bytes:
    """A request frame for ``array`` (float32, int8 or uint8; 1..8 dimensions).

    Args:
        array: The input tensor.
        model: The model to ask (None: the server's default model).

    Raises:
        ValueError: a dtype, rank or model name that cannot be framed.
    """
    arr = np.asarray(array)
    code = CODE_OF_DTYPE.get(arr.dtype.name)
    if code is None:
        raise ValueError(f"dtype {arr.dtype.name} cannot be sent: use float32, int8 or uint8")
    if not 1 <= arr.ndim <= MAX_NDIM:
        raise ValueError(f"ndim must be 1..{MAX_NDIM}")
    prefix, flags = b"", 0
    if model is not None:
        if not MODEL_NAME_RE.fullmatch(model):
            raise ValueError("model name must match [a-z0-9][a-z0-9_-]{0,62}")
        prefix, flags = bytes([len(model)]) + model.encode("ascii"), FLAG_MODEL_NAME
    data = np.ascontiguousarray(arr, dtype=DTYPE_CODES[code]).tobytes()
    dims = _DIMS[arr.ndim].pack(*arr.shape)
    length = len(prefix) + len(dims) + len(data)
    return HEADER.pack(REQUEST_MAGIC, VERSION, code, arr.ndim, flags, length) + prefix + dims + data


def ok_prefix(version: str, dtype_code: int, shape: tuple[int, ...], nbytes: int) -> bytes:
    """Header, label and dims of an ok response whose tensor has ``nbytes`` bytes."""
    label = version.encode()[:_MAX_FIELD]
    dims = _DIMS[len(shape)].pack(*shape)
    length = 2 + len(label) + len(dims) + nbytes
    head = HEADER.pack(RESPONSE_MAGIC, STATUS_OK, dtype_code, len(shape), 0, length)
    return head + _U16.pack(len(label)) + label + dims


def encode_response(array: np.ndarray, version: str) -> bytes:
    """An ok response frame carrying ``array`` and the model version label."""
    arr = np.asarray(array)
    code = CODE_OF_DTYPE.get(arr.dtype.name)
    if code is None or not 1 <= arr.ndim <= MAX_NDIM:
        raise ValueError(f"output {arr.dtype.name}/{arr.ndim}-d cannot be framed")
    data = np.ascontiguousarray(arr, dtype=DTYPE_CODES[code]).tobytes()
    return ok_prefix(version, code, arr.shape, len(data)) + data


def encode_error(status: int, code: str, message: str) -> bytes:
    """An error response frame (status 1 client error, 2 server error)."""
    c = code.encode("ascii", "replace")[:_MAX_FIELD]
    m = message.encode()[:_MAX_FIELD]
    body = _U16.pack(len(c)) + c + _U16.pack(len(m)) + m
    return HEADER.pack(RESPONSE_MAGIC, status, 0, 0, 0, len(body)) + body
