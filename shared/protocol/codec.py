"""Bytes ↔ message, bounded: the only place payloads are serialised or parsed.

JSON payloads (every :data:`~shared.protocol.messages.Message`) are compact UTF-8 JSON;
artifact chunks are binary (:func:`encode_chunk`, :func:`decode_chunk`). Both directions
enforce :data:`MAX_PAYLOAD_BYTES`
(under the 128 KB payload limit of AWS IoT and EMQX defaults), and decoding checks the
size *before* parsing so a hostile publisher cannot make a device parse megabytes.
Any bytes in give a message or a :class:`~shared.errors.ProtocolError`, never another
exception: an MQTT callback can catch that one class and keep running.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.artifacts.chunking import (
    SealedChunk,
    sealed_chunk_from_bytes,
    sealed_chunk_to_bytes,
)
from shared.errors import ProtocolError
from shared.protocol.messages import Message

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "decode_chunk",
    "decode_message",
    "decode_message_as",
    "encode_chunk",
    "encode_message",
]

MAX_PAYLOAD_BYTES = 128_000
"""Largest payload fedge sends or accepts (< 128 KB = 128,000 bytes, < 128 KiB)."""

_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
M = TypeVar("M", bound=BaseModel)


def encode_message(message: BaseModel) -> bytes:
    """Serialise a message to its wire bytes.

    Raises:
        ProtocolError: the encoded message exceeds :data:`MAX_PAYLOAD_BYTES`.
    """
    data = message.model_dump_json(exclude_none=True).encode("utf-8")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"{type(message).__name__} encodes to {len(data)} bytes, over the "
            f"{MAX_PAYLOAD_BYTES}-byte limit"
        )
    return data


def _check_bytes(data: Any) -> bytes:
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ProtocolError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(data)} bytes is over the {MAX_PAYLOAD_BYTES} limit")
    if not data:
        raise ProtocolError("empty payload")
    return data


def _summary(exc: ValidationError) -> str:
    # Field locations and pydantic's messages only: never echo the payload itself.
    errs = exc.errors(include_url=False, include_input=False)
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<message>'}: {e['msg']}" for e in errs[:5]
    )
    more = f" (+{len(errs) - 5} more)" if len(errs) > 5 else ""
    return shown + more


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse wire bytes into whichever message their ``kind`` names.

    Raises:
        ProtocolError: too large, not JSON, unknown ``kind`` or invalid fields.
    """
    raw = _check_bytes(data)
    try:
        return _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise ProtocolError(f"invalid message: {_summary(exc)}") from exc
    except (ValueError, RecursionError) as exc:  # defensive: parser limits
        raise ProtocolError(f"invalid message: {type(exc).__name__}") from exc


def decode_message_as(data: bytes | bytearray | memoryview, cls: type[M]) -> M:
    """Parse wire bytes that must be one specific message class.

    Raises:
        ProtocolError: as :func:`decode_message`, or a valid message of another kind.
    """
    message = decode_message(data)
    if not isinstance(message, cls):
        raise ProtocolError(
            f"expected a {cls.__name__}, got kind {getattr(message, 'kind', '?')!r}"
        )
    return message


def encode_chunk(chunk: SealedChunk) -> bytes:
    """Binary chunk message (layout in :mod:`shared.artifacts.chunking`, §5)."""
    return sealed_chunk_to_bytes(chunk)


def decode_chunk(data: bytes | bytearray | memoryview) -> SealedChunk:
    """Parse a binary chunk message (size checked first).

    Raises:
        ProtocolError: not bytes, too large, or not a well-formed chunk (C1-C3).
    """
    return sealed_chunk_from_bytes(_check_bytes(data))
