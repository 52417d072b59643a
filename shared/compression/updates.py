"""Model-update codec: a named set of float tensors (a delta) ↔ compact bytes.

Three modes, chosen per update by the client:

* ``fp32`` — raw little-endian float32; the uncompressed baseline (and the only mode that
  can carry non-finite values, so the server's finiteness check is what stops them).
* ``int8`` — symmetric per-tensor quantization: ``q = round(x / s)``, ``s = max|x| / 127``.
  About 0.25x the float32 bytes plus a small header per tensor.
* ``topk`` — keep the ``k`` largest-magnitude entries of each tensor, int8-quantized, with
  their flat indices (uint32). Pair with error feedback: the part not sent this round is
  returned as a residual for the client to add to its next delta.

Wire format (little-endian)::

    b"FUP1" | u16 tensor_count | tensor*
    tensor := u16 name_len | name utf-8 | u8 mode | u8 ndim | u32 dim*ndim | body
    body   := fp32: f32*n | int8: f32 scale, i8*n | topk: f32 scale, u32 k, u32*k, i8*k

Decoding is bounded: every length is checked against the bytes present and the caller's
limits before anything is allocated, so any byte string yields arrays or a
:class:`MalformedUpdateError`, never a crash or an oversized allocation.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from shared.errors import FedgeError

UpdateMode = Literal["fp32", "int8", "topk"]
UPDATE_MODES: Final[tuple[UpdateMode, ...]] = ("fp32", "int8", "topk")

MAGIC: Final = b"FUP1"
_MODE_CODES: Final[dict[str, int]] = {"fp32": 0, "int8": 1, "topk": 2}
_CODE_MODES: Final[dict[int, UpdateMode]] = {0: "fp32", 1: "int8", 2: "topk"}
_MAX_NDIM: Final = 8
_QMAX: Final = 127

Float32Array = NDArray[np.float32]


class MalformedUpdateError(FedgeError):
    """An update payload that does not parse, or exceeds the receiver's limits."""

    code = "malformed_update"


class NonFiniteUpdateError(FedgeError):
    """An update with NaN or infinite values where the codec cannot represent them."""

    code = "non_finite_update"


@dataclass(frozen=True)
class EncodedUpdate:
    """An encoded update and what it cost.

    Attributes:
        payload: The bytes to send.
        raw_bytes: What the same tensors take as plain float32 (the baseline).
        residual: ``input - decoded(payload)`` per tensor: what this encoding dropped.
            Clients using error feedback add it to their next round's delta.
    """

    payload: bytes
    raw_bytes: int
    residual: dict[str, Float32Array]

    @property
    def ratio(self) -> float:
        """Payload bytes over float32 bytes."""
        return len(self.payload) / self.raw_bytes if self.raw_bytes else 0.0


def float32_nbytes(arrays: Mapping[str, NDArray[np.generic]]) -> int:
    """Bytes the tensors take as plain float32 (the uncompressed upload)."""
    return sum(4 * int(a.size) for a in arrays.values())


def _quantize(values: Float32Array) -> tuple[float, NDArray[np.int8]]:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if not math.isfinite(peak):
        raise NonFiniteUpdateError("int8 update codec cannot encode NaN or infinity")
    scale = peak / _QMAX if peak > 0 else 0.0
    if scale == 0.0:
        return 0.0, np.zeros(values.shape, dtype=np.int8)
    q = np.clip(np.rint(values / scale), -_QMAX, _QMAX).astype(np.int8)
    return scale, q


def _encode_tensor(
    name: str, values: Float32Array, mode: UpdateMode, topk_fraction: float
) -> tuple[bytes, Float32Array]:
    """One tensor's bytes and its decoded value (to compute the residual)."""
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > 0xFFFF or values.ndim > _MAX_NDIM:
        raise ValueError(f"tensor {name!r}: name too long or too many dimensions")
    head = struct.pack("<H", len(name_bytes)) + name_bytes
    head += struct.pack(f"<BB{values.ndim}I", _MODE_CODES[mode], values.ndim, *values.shape)
    flat = values.reshape(-1)
    if mode == "fp32":
        return head + flat.astype("<f4").tobytes(), values.copy()
    if mode == "int8":
        scale, q = _quantize(flat)
        decoded = (q.astype(np.float32) * np.float32(scale)).reshape(values.shape)
        return head + struct.pack("<f", scale) + q.tobytes(), decoded
    k = max(1, math.ceil(topk_fraction * flat.size)) if flat.size else 0
    k = min(k, flat.size)
    # argpartition: O(n) selection of the k largest magnitudes; sorted indices compress
    # better downstream and make the payload deterministic.
    idx = (
        np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
        if k
        else (np.zeros(0, dtype=np.int64))
    )
    scale, q = _quantize(flat[idx])
    decoded_flat = np.zeros(flat.size, dtype=np.float32)
    decoded_flat[idx] = q.astype(np.float32) * np.float32(scale)
    body = struct.pack("<fI", scale, k) + idx.astype("<u4").tobytes() + q.tobytes()
    return head + body, decoded_flat.reshape(values.shape)


def encode_update(
    delta: Mapping[str, NDArray[np.floating]],
    *,
    mode: UpdateMode = "int8",
    topk_fraction: float = 0.1,
    residual: Mapping[str, NDArray[np.floating]] | None = None,
) -> EncodedUpdate:
    """Encode a named set of tensors.

    Args:
        delta: Tensor name → values (cast to float32).
        mode: ``fp32``, ``int8`` or ``topk``.
        topk_fraction: Share of each tensor's entries kept in ``topk`` mode, in (0, 1].
        residual: Error feedback from the previous round, added to ``delta`` before
            encoding (missing names count as zero).

    Raises:
        NonFiniteUpdateError: ``int8``/``topk`` asked to encode NaN or infinity.
        ValueError: an unknown mode, a bad ``topk_fraction``, or too many tensors.
    """
    if mode not in _MODE_CODES:
        raise ValueError(f"unknown update mode {mode!r}; use one of {UPDATE_MODES}")
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
    if len(delta) > 0xFFFF:
        raise ValueError("too many tensors in one update")
    parts = [MAGIC, struct.pack("<H", len(delta))]
    new_residual: dict[str, Float32Array] = {}
    for name, array in delta.items():
        values = np.asarray(array, dtype=np.float32)
        if residual is not None and name in residual:
            values = values + np.asarray(residual[name], dtype=np.float32)
        blob, decoded = _encode_tensor(name, values, mode, topk_fraction)
        parts.append(blob)
        # fp32 may carry inf on purpose (the server rejects it); inf - inf must not warn.
        with np.errstate(invalid="ignore"):
            new_residual[name] = values - decoded
    return EncodedUpdate(b"".join(parts), float32_nbytes(delta), new_residual)


class _Reader:
    """Bounds-checked cursor over a payload."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedUpdateError("update payload is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int | float, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def decode_update(
    payload: bytes,
    *,
    max_tensors: int = 4096,
    max_elements: int = 50_000_000,
) -> dict[str, Float32Array]:
    """Decode bytes made by :func:`encode_update` back into float32 tensors.

    Args:
        payload: The encoded update.
        max_tensors: Refuse payloads naming more tensors than this.
        max_elements: Refuse payloads whose tensors hold more values in total.

    Raises:
        MalformedUpdateError: bad magic, truncation, trailing bytes, duplicate names,
            out-of-range indices, unknown mode, or a limit exceeded.
    """
    reader = _Reader(payload)
    if bytes(reader.take(len(MAGIC))) != MAGIC:
        raise MalformedUpdateError("not a fedge update (bad magic)")
    (count,) = reader.unpack("<H")
    if int(count) > max_tensors:
        raise MalformedUpdateError(f"update has {count} tensors; limit {max_tensors}")
    out: dict[str, Float32Array] = {}
    total = 0
    for _ in range(int(count)):
        (name_len,) = reader.unpack("<H")
        try:
            name = bytes(reader.take(int(name_len))).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedUpdateError("tensor name is not utf-8") from exc
        if name in out:
            raise MalformedUpdateError(f"tensor {name!r} appears twice")
        mode_code, ndim = (int(v) for v in reader.unpack("<BB"))
        if mode_code not in _CODE_MODES or ndim > _MAX_NDIM:
            raise MalformedUpdateError(f"tensor {name!r}: unknown mode or too many dims")
        shape = tuple(int(d) for d in reader.unpack(f"<{ndim}I"))
        size = math.prod(shape)
        total += size
        if total > max_elements:
            raise MalformedUpdateError(f"update holds over {max_elements} values")
        out[name] = _decode_body(reader, _CODE_MODES[mode_code], shape, size)
    if reader.pos != len(payload):
        raise MalformedUpdateError("trailing bytes after the last tensor")
    return out


def _decode_body(
    reader: _Reader, mode: UpdateMode, shape: tuple[int, ...], size: int
) -> Float32Array:
    if mode == "fp32":
        return np.frombuffer(reader.take(4 * size), dtype="<f4").astype(np.float32).reshape(shape)
    (scale,) = reader.unpack("<f")
    if mode == "int8":
        q = np.frombuffer(reader.take(size), dtype=np.int8)
        return (q.astype(np.float32) * np.float32(scale)).reshape(shape)
    (k,) = reader.unpack("<I")
    k = int(k)
    if k > size:
        raise MalformedUpdateError(f"top-k count {k} exceeds tensor size {size}")
    idx = np.frombuffer(reader.take(4 * k), dtype="<u4").astype(np.int64)
    q = np.frombuffer(reader.take(k), dtype=np.int8)
    if k and int(idx.max()) >= size:
        raise MalformedUpdateError("top-k index out of range")
    flat = np.zeros(size, dtype=np.float32)
    flat[idx] = q.astype(np.float32) * np.float32(scale)
    return flat.reshape(shape)
