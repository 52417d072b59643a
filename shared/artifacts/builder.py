"""Cloud side: turn artifact bytes into a manifest and encrypted chunks.

``ArtifactBuilder.build`` compresses the artifact (and, given the base a device runs,
both delta encodings against it; the smallest of the three is kept), encrypts each
≤ 64 KiB chunk under a fresh content key with associated data binding artifact id, index
and count, hashes every sealed chunk, and wraps the content key for every recipient
device. Signing is separate (:func:`sign_manifest`) so the release key can live elsewhere
than the builder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from shared.artifacts.canonical import canonical_json
from shared.artifacts.chunking import SealedChunk, chunk_ad, split
from shared.artifacts.compression import (
    DEFAULT_LEVEL,
    bytediff_compress,
    compress,
    delta_compress,
)
from shared.artifacts.manifest import (
    MAX_CHUNK_SIZE,
    DeltaBase,
    Encoding,
    Manifest,
    Precision,
    Purpose,
    b64encode,
    content_key_ad,
)
from shared.artifacts.trust import MANIFEST_TYPE, Envelope, sign_envelope
from shared.crypto import ContentKey, PublicKey, SigningKey, encrypt, seal

__all__ = ["ArtifactBuilder", "BaseArtifact", "Release", "sign_manifest"]


@dataclass(frozen=True, repr=False)
class BaseArtifact:
    """The artifact a device currently runs, offered as a delta base."""

    version: int
    data: bytes

    def __repr__(self) -> str:
        return f"BaseArtifact(v{self.version}, {len(self.data)} B)"


@dataclass(frozen=True)
class Release:
    """A built (unsigned) manifest and its sealed chunks, in index order."""

    manifest: Manifest
    chunks: tuple[SealedChunk, ...]


class ArtifactBuilder:
    """Builds releases; stateless apart from its settings."""

    def __init__(self, *, chunk_size: int = MAX_CHUNK_SIZE, level: int = DEFAULT_LEVEL) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
        self.chunk_size = chunk_size
        self.level = level

    def encode(self, artifact: bytes, base: BaseArtifact | None) -> tuple[Encoding, bytes]:
        """Compress ``artifact``; with a ``base``, the smallest of full and both deltas.

        A tie goes to the full artifact (it does not depend on what the device holds).
        """
        full = compress(artifact, level=self.level)
        if base is None:
            return Encoding.ZSTD, full
        candidates = [
            (Encoding.ZSTD, full),
            (Encoding.ZSTD_DELTA, delta_compress(artifact, base.data, level=self.level)),
            (Encoding.ZSTD_BYTEDIFF, bytediff_compress(artifact, base.data, level=self.level)),
        ]
        return min(candidates, key=lambda c: len(c[1]))  # first of the smallest

    def build(
        self,
        artifact: bytes,
        *,
        model_id: str,
        version: int,
        precision: Precision,
        hardware_ids: list[str],
        recipients: Mapping[str, PublicKey],
        rollout_id: str,
        now: int,
        ttl_seconds: int = 7 * 24 * 3600,
        base: BaseArtifact | None = None,
        purpose: Purpose = Purpose.INSTALL,
    ) -> Release:
        """Build a release of ``artifact`` for ``recipients`` (device id → X25519 key).

        ``purpose`` (signed with the manifest) says whether devices install it, hold it as a
        shadow candidate or only time it (``docs/protocol.md`` §15).
        """
        encoding, encoded = self.encode(artifact, base)
        artifact_id = os.urandom(16).hex()
        content_key = ContentKey.generate()
        pieces = split(encoded, self.chunk_size)
        count = len(pieces)
        chunks = tuple(
            SealedChunk(
                artifact_id, i, count, encrypt(content_key, p, chunk_ad(artifact_id, i, count))
            )
            for i, p in enumerate(pieces)
        )
        wrapped = {
            device_id: b64encode(
                seal(key, content_key.to_bytes(), content_key_ad(artifact_id, device_id))
            )
            for device_id, key in sorted(recipients.items())
        }
        delta_base = None
        if encoding.is_delta and base is not None:
            delta_base = DeltaBase(
                version=base.version,
                sha256=hashlib.sha256(base.data).hexdigest(),
                length=len(base.data),
            )
        manifest = Manifest(
            model_id=model_id,
            version=version,
            artifact_id=artifact_id,
            rollout_id=rollout_id,
            issued_at=now,
            expires=now + ttl_seconds,
            precision=precision,
            hardware_ids=tuple(hardware_ids),
            length=len(artifact),
            sha256=hashlib.sha256(artifact).hexdigest(),
            encoding=encoding,
            encoded_length=len(encoded),
            chunk_size=self.chunk_size,
            chunk_count=count,
            chunk_sha256=tuple(hashlib.sha256(c.body).hexdigest() for c in chunks),
            delta_base=delta_base,
            content_keys=wrapped,
            purpose=purpose,
        )
        return Release(manifest, chunks)


def sign_manifest(
    manifest: Manifest,
    release_key: SigningKey,
    *,
    certificate: Envelope,
    revocations: Envelope | None = None,
) -> Envelope:
    """Sign ``manifest`` with the release key, attaching its root-signed certificate."""
    payload = canonical_json(manifest.model_dump(mode="json"))
    return sign_envelope(
        MANIFEST_TYPE, payload, release_key, certificate=certificate, revocations=revocations
    )
