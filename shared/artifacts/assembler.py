"""Device side: collect chunks, verify them, and reassemble the artifact.

Pure: the assembler holds only the verified manifest; download progress is an immutable
:class:`AssemblyState` passed in and returned, so the updater can persist each accepted
chunk, rebuild the state after a restart, and resume by asking for :meth:`missing`.

Per chunk (:meth:`ArtifactAssembler.add`), in order:

- A1 artifact id and chunk count match the manifest   → ``MalformedArtifactError``
- A2 body length is exactly the signed layout's        → ``LengthMismatchError``
- A3 sha256(body) equals the signed chunk hash         → ``HashMismatchError``
- duplicates of an accepted chunk are ignored.

On :meth:`ArtifactAssembler.assemble`: A4 all chunks present (``LengthMismatchError``),
A5 decrypt each chunk
(``MalformedArtifactError``), A6 for either delta encoding the base is the artifact held
(``DeltaBaseError``), A7 decode according to the encoding, bounded: the decompressed
length equals the signed length (``LengthMismatchError``), A8 sha256 of the result equals
the signed one (``HashMismatchError``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from shared.artifacts.chunking import SealedChunk, chunk_ad
from shared.artifacts.compression import bytediff_decompress_bounded, decompress_bounded
from shared.artifacts.manifest import Encoding, Manifest, b64decode, content_key_ad
from shared.crypto import ContentKey, PrivateKey, decrypt, open_sealed
from shared.crypto.aead import OVERHEAD
from shared.errors import (
    CryptoError,
    DeltaBaseError,
    HashMismatchError,
    LengthMismatchError,
    MalformedArtifactError,
    ProtocolError,
    WrongRecipientError,
)

__all__ = ["ArtifactAssembler", "AssemblyState", "ChunkOutcome", "unwrap_content_key"]


class ChunkOutcome(StrEnum):
    """What :meth:`ArtifactAssembler.add` did with a chunk."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class AssemblyState:
    """Verified chunk bodies received so far for one artifact (index → body)."""

    artifact_id: str
    chunks: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def received(self) -> frozenset[int]:
        """Indices accepted so far."""
        return frozenset(self.chunks)

    def __repr__(self) -> str:
        return f"AssemblyState({self.artifact_id}, {len(self.chunks)} chunks)"


def unwrap_content_key(manifest: Manifest, device_id: str, private_key: PrivateKey) -> ContentKey:
    """Open this device's wrapped content key.

    Raises:
        WrongRecipientError: no key for ``device_id``, or it was sealed to another key
            or for another artifact/device (associated data mismatch).
    """
    wrapped = manifest.content_keys.get(device_id)
    if wrapped is None:
        raise WrongRecipientError("no content key for this device")
    try:
        raw = open_sealed(
            private_key, b64decode(wrapped), content_key_ad(manifest.artifact_id, device_id)
        )
        return ContentKey(raw)
    except (CryptoError, ProtocolError) as exc:
        raise WrongRecipientError("content key is not wrapped for this device") from exc


class ArtifactAssembler:
    """Verifies chunks against one verified manifest and rebuilds the artifact."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def start(self) -> AssemblyState:
        """An empty state for this manifest's artifact."""
        return AssemblyState(self.manifest.artifact_id)

    def _check(self, index: int, body: bytes) -> None:
        m = self.manifest
        if not 0 <= index < m.chunk_count:
            raise MalformedArtifactError("chunk index out of range")
        if len(body) != m.chunk_plain_length(index) + OVERHEAD:  # A2
            raise LengthMismatchError(f"chunk {index} has the wrong length")
        digest = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(digest, m.chunk_sha256[index]):  # A3
            raise HashMismatchError(f"chunk {index} hash mismatch")

    def add(self, state: AssemblyState, chunk: SealedChunk) -> tuple[AssemblyState, ChunkOutcome]:
        """Verify ``chunk`` and return the new state (unchanged for a duplicate).

        Raises:
            SecurityError: a subclass naming the failed check (A1-A3); state is unchanged.
        """
        m = self.manifest
        if chunk.artifact_id != m.artifact_id or chunk.count != m.chunk_count:  # A1
            raise MalformedArtifactError("chunk does not belong to this artifact")
        self._check(chunk.index, chunk.body)
        if chunk.index in state.chunks:
            return state, ChunkOutcome.DUPLICATE
        chunks = dict(state.chunks)
        chunks[chunk.index] = chunk.body
        return AssemblyState(state.artifact_id, MappingProxyType(chunks)), ChunkOutcome.ACCEPTED

    def missing(self, state: AssemblyState) -> tuple[int, ...]:
        """Indices still to fetch, ascending."""
        return tuple(i for i in range(self.manifest.chunk_count) if i not in state.chunks)

    def is_complete(self, state: AssemblyState) -> bool:
        """Whether every chunk has been accepted."""
        return not self.missing(state)

    def assemble(
        self, state: AssemblyState, content_key: ContentKey, *, base: bytes | None = None
    ) -> bytes:
        """Decrypt, decode and verify the complete artifact (checks A4-A8).

        Args:
            state: A complete state for this manifest.
            content_key: From :func:`unwrap_content_key`.
            base: The installed artifact, required when the manifest is a delta.

        Returns:
            The artifact bytes, verified against the signed length and sha256.
        """
        m = self.manifest
        if state.artifact_id != m.artifact_id or not self.is_complete(state):  # A4
            raise LengthMismatchError("artifact is missing chunks")
        pieces = []
        for index in range(m.chunk_count):
            # Every body passed A1-A3 in add() (also when restored from disk), and A5/A8
            # below bind each one to this artifact again: hashing them twice buys nothing.
            body = state.chunks[index]
            try:  # A5
                pieces.append(
                    decrypt(content_key, body, chunk_ad(m.artifact_id, index, m.chunk_count))
                )
            except CryptoError as exc:
                raise MalformedArtifactError(f"chunk {index} does not decrypt") from exc
        encoded = b"".join(pieces)
        if m.encoding.is_delta:  # A6
            db = m.delta_base
            if (
                base is None
                or db is None
                or len(base) != db.length
                or hashlib.sha256(base).hexdigest() != db.sha256
            ):
                raise DeltaBaseError("delta base is not the installed artifact")
        artifact = _decode(m.encoding, encoded, m.length, base)  # A7
        if not hmac.compare_digest(hashlib.sha256(artifact).hexdigest(), m.sha256):  # A8
            raise HashMismatchError("artifact hash mismatch")
        return artifact


def _decode(encoding: Encoding, encoded: bytes, length: int, base: bytes | None) -> bytes:
    """Decode ``encoded`` into exactly ``length`` bytes (A7); ``base`` is checked (A6)."""
    if encoding is Encoding.ZSTD:
        return decompress_bounded(encoded, length)
    if base is None:  # unreachable after A6; keeps the delta decoders' contract explicit
        raise DeltaBaseError("a delta needs its base artifact")
    if encoding is Encoding.ZSTD_DELTA:
        return decompress_bounded(encoded, length, base=base)
    return bytediff_decompress_bounded(encoded, length, base=base)
