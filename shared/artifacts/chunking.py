"""Chunks: splitting, the associated data that binds them, and their binary wire form.

Wire form of a chunk message (all integers big-endian)::

    offset size field
    0      4    magic  b"FDC1"
    4      16   artifact id (raw bytes of the 32-hex-digit id)
    20     4    index  (uint32, 0-based)
    24     4    count  (uint32, total chunks)
    28     n    body   = nonce (12) || AES-256-GCM ciphertext || tag (16)

The body's sha256 is what the manifest signs per chunk. The GCM associated data is
:func:`chunk_ad` so a chunk cannot be moved to another artifact, index or count.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from shared.artifacts.manifest import MAX_CHUNK_SIZE, MAX_CHUNKS
from shared.crypto.aead import OVERHEAD
from shared.errors import ProtocolError

__all__ = [
    "CHUNK_HEADER_BYTES",
    "CHUNK_MAGIC",
    "MAX_CHUNK_MESSAGE_BYTES",
    "SealedChunk",
    "chunk_ad",
    "is_artifact_id",
    "sealed_chunk_from_bytes",
    "sealed_chunk_to_bytes",
    "split",
]

CHUNK_MAGIC = b"FDC1"
_HEADER = struct.Struct(">4s16sII")
CHUNK_HEADER_BYTES = _HEADER.size
MAX_CHUNK_MESSAGE_BYTES = CHUNK_HEADER_BYTES + MAX_CHUNK_SIZE + OVERHEAD
_AID = re.compile(r"[0-9a-f]{32}", re.ASCII)


@dataclass(frozen=True)
class SealedChunk:
    """One encrypted chunk of an artifact, as carried on the wire."""

    artifact_id: str
    index: int
    count: int
    body: bytes

    def __repr__(self) -> str:  # never dump payload bytes into logs
        return f"SealedChunk({self.artifact_id}, {self.index}/{self.count}, {len(self.body)} B)"


def chunk_ad(artifact_id: str, index: int, count: int) -> bytes:
    """Associated data for chunk ``index`` of ``count`` of ``artifact_id``."""
    return b"fedge/v1/chunk\x00" + bytes.fromhex(artifact_id) + struct.pack(">II", index, count)


def split(data: bytes, chunk_size: int) -> list[bytes]:
    """Split ``data`` into ``chunk_size`` pieces (the last may be shorter)."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError("chunk_size out of range")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def sealed_chunk_to_bytes(chunk: SealedChunk) -> bytes:
    """Encode a chunk message."""
    return (
        _HEADER.pack(CHUNK_MAGIC, bytes.fromhex(chunk.artifact_id), chunk.index, chunk.count)
        + chunk.body
    )


def sealed_chunk_from_bytes(data: bytes) -> SealedChunk:
    """Decode a chunk message; any malformed input raises :class:`ProtocolError`.

    Bounds are checked here, before any hashing or decryption: size (rule C1), magic
    (C2), ``index < count <= MAX_CHUNKS`` (C3).
    """
    if not CHUNK_HEADER_BYTES + OVERHEAD <= len(data) <= MAX_CHUNK_MESSAGE_BYTES:  # C1
        raise ProtocolError("chunk message size out of range")
    magic, aid, index, count = _HEADER.unpack_from(data)
    if magic != CHUNK_MAGIC:  # C2
        raise ProtocolError("not a chunk message")
    if not 0 <= index < count <= MAX_CHUNKS:  # C3
        raise ProtocolError("chunk index out of range")
    return SealedChunk(aid.hex(), index, count, bytes(data[CHUNK_HEADER_BYTES:]))


def is_artifact_id(text: str) -> bool:
    """Whether ``text`` is a well-formed artifact id (32 lowercase hex digits)."""
    return isinstance(text, str) and _AID.fullmatch(text) is not None
