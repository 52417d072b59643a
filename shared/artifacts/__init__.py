"""TUF-style artifacts: manifests, trust, chunking, compression, building and assembling.

Cloud side: :class:`ArtifactBuilder` → :func:`sign_manifest`. Device side:
:func:`verify_manifest` → :func:`unwrap_content_key` → :class:`ArtifactAssembler`.
All pure functions and classes over bytes; time is passed in as ``now``.
"""

from __future__ import annotations

from shared.artifacts.assembler import (
    ArtifactAssembler,
    AssemblyState,
    ChunkOutcome,
    unwrap_content_key,
)
from shared.artifacts.builder import ArtifactBuilder, BaseArtifact, Release, sign_manifest
from shared.artifacts.chunking import (
    SealedChunk,
    chunk_ad,
    sealed_chunk_from_bytes,
    sealed_chunk_to_bytes,
)
from shared.artifacts.manifest import (
    DeltaBase,
    Encoding,
    Manifest,
    Precision,
    Purpose,
    manifest_from_bytes,
    manifest_to_bytes,
)
from shared.artifacts.trust import (
    Envelope,
    KeyCertificate,
    RevocationList,
    Role,
    TrustStore,
    certify_key,
    sign_envelope,
    sign_revocations,
    verify_signed,
)
from shared.artifacts.verify import VerifiedManifest, verify_manifest

__all__ = [
    "ArtifactAssembler",
    "ArtifactBuilder",
    "AssemblyState",
    "BaseArtifact",
    "ChunkOutcome",
    "DeltaBase",
    "Encoding",
    "Envelope",
    "KeyCertificate",
    "Manifest",
    "Precision",
    "Purpose",
    "Release",
    "RevocationList",
    "Role",
    "SealedChunk",
    "TrustStore",
    "VerifiedManifest",
    "certify_key",
    "chunk_ad",
    "manifest_from_bytes",
    "manifest_to_bytes",
    "sealed_chunk_from_bytes",
    "sealed_chunk_to_bytes",
    "sign_envelope",
    "sign_manifest",
    "sign_revocations",
    "unwrap_content_key",
    "verify_manifest",
    "verify_signed",
]
