"""The TUF-style release manifest: what a device needs to fetch, verify and install a model.

A manifest is immutable (frozen pydantic) and travels as canonical JSON inside a signed
envelope (:mod:`shared.artifacts.trust`). Every consistency rule a verifier relies on is
enforced at parse time, so downstream code can trust the shape of a parsed manifest:
chunk count agrees with encoded length and chunk size, one hash per chunk, a delta base
exactly when the encoding is a delta.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.artifacts.canonical import (
    JSON_ARRAY,
    SpecVersion,
    canonical_json,
    json_enum,
    parse_signed_model,
)
from shared.errors import ProtocolError
from shared.precision import Precision

__all__ = [
    "ID_PATTERN",
    "MAX_ARTIFACT_BYTES",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "ArtifactId",
    "DeltaBase",
    "Encoding",
    "Hex256",
    "Identifier",
    "Manifest",
    "Precision",
    "Purpose",
    "b64decode",
    "b64encode",
    "content_key_ad",
    "manifest_from_bytes",
    "manifest_to_bytes",
]

#: Device ids, model ids, group ids, rollout ids: safe in MQTT topics, ACL files and paths.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: 64 KiB of plaintext per chunk keeps every chunk message far below 128 KB.
MAX_CHUNK_SIZE = 64 * 1024
#: 1024 hex hashes (~68 KB) keep a manifest below the 128 KB message limit.
MAX_CHUNKS = 1024
#: Upper bound on a decompressed artifact; device profiles set tighter limits.
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024

Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
Hex256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ArtifactId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict standard base64; raises :class:`ProtocolError` on anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ProtocolError("invalid base64") from exc


def content_key_ad(artifact_id: str, device_id: str) -> bytes:
    """Associated data binding a wrapped content key to one artifact and one device.

    Without it a wrapped key could be moved to another manifest entry unnoticed.
    """
    return f"fedge/v1/content-key\x00{artifact_id}\x00{device_id}".encode()


class Encoding(StrEnum):
    """How the artifact bytes are encoded before encryption."""

    ZSTD = "zstd"  # a full artifact, zstd-compressed
    ZSTD_DELTA = "zstd_delta"  # zstd with the base artifact as a raw-content dictionary
    ZSTD_BYTEDIFF = "zstd_bytediff"  # zstd of (new - base) mod 256, byte by byte

    @property
    def is_delta(self) -> bool:
        """Whether decoding needs the base artifact (and the manifest a ``delta_base``)."""
        return self in (Encoding.ZSTD_DELTA, Encoding.ZSTD_BYTEDIFF)


class Purpose(StrEnum):
    """What a device does with a verified artifact (``docs/protocol.md`` §15).

    Signed with the rest of the manifest, so nobody between the release key and the
    device can turn a trial into an install (or back).
    """

    INSTALL = "install"  # write the inactive slot, activate, probe, commit; moves the floor
    SHADOW = "shadow"  # write the inactive slot and hold it as a candidate; never activated
    TRIAL = "trial"  # time it on the device's CPU, report the timing, delete it; no slot


class DeltaBase(BaseModel):
    """The installed artifact a delta applies to (the device must hold exactly this)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    sha256: Hex256
    length: int = Field(ge=1, le=MAX_ARTIFACT_BYTES)


class Manifest(BaseModel):
    """A signed description of one deliverable artifact (spec version 1).

    Attributes:
        version: Strictly increasing per device; the anti-rollback floor compares it.
        length, sha256: Of the final, decoded artifact (the ``.tflite`` bytes).
        encoded_length: Bytes after compression/delta, before encryption.
        chunk_sha256: sha256 of each sealed chunk body (``nonce || ciphertext || tag``),
            so tampering is caught before decryption and even by a device holding the key.
        content_keys: device id → base64 sealed content key (see :func:`content_key_ad`).
        purpose: What the device does with it (:class:`Purpose`); ``install`` by default.
            Only an install moves the anti-rollback floor.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec_version: SpecVersion = 1
    model_id: Identifier
    version: int = Field(ge=1, le=2**53)
    artifact_id: ArtifactId
    rollout_id: Identifier
    issued_at: int = Field(ge=0)
    expires: int = Field(ge=0)
    # J2: enums and tuples arrive as JSON strings and arrays (see shared.artifacts.canonical).
    precision: Annotated[Precision, json_enum(Precision)]
    hardware_ids: Annotated[tuple[Identifier, ...], JSON_ARRAY] = Field(min_length=1, max_length=64)
    length: int = Field(ge=1, le=MAX_ARTIFACT_BYTES)
    sha256: Hex256
    encoding: Annotated[Encoding, json_enum(Encoding)]
    encoded_length: int = Field(ge=1, le=MAX_CHUNKS * MAX_CHUNK_SIZE)
    chunk_size: int = Field(ge=1, le=MAX_CHUNK_SIZE)
    chunk_count: int = Field(ge=1, le=MAX_CHUNKS)
    chunk_sha256: Annotated[tuple[Hex256, ...], JSON_ARRAY] = Field(
        min_length=1, max_length=MAX_CHUNKS
    )
    delta_base: DeltaBase | None = None
    content_keys: dict[Identifier, str] = Field(min_length=1)
    purpose: Annotated[Purpose, json_enum(Purpose)] = Purpose.INSTALL

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        # Rule M1: the chunk layout is fully determined by encoded_length and chunk_size.
        if self.chunk_count != -(-self.encoded_length // self.chunk_size):
            raise ValueError("chunk_count does not match encoded_length / chunk_size")
        # Rule M2: exactly one signed hash per chunk.
        if len(self.chunk_sha256) != self.chunk_count:
            raise ValueError("one chunk hash per chunk required")
        # Rule M3: a delta (either delta encoding) names its base; a full artifact does not.
        if self.encoding.is_delta != (self.delta_base is not None):
            raise ValueError("delta_base required exactly for the delta encodings")
        if self.expires <= self.issued_at:
            raise ValueError("expires must be after issued_at")
        return self

    def chunk_plain_length(self, index: int) -> int:
        """Plaintext length of chunk ``index``: ``chunk_size`` except for the last one."""
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.encoded_length - self.chunk_size * (self.chunk_count - 1)

    def for_devices(self, device_ids: list[str]) -> Manifest:
        """A copy carrying only the content keys of ``device_ids`` (per-device manifests).

        Raises:
            KeyError: a device id has no wrapped key in this manifest.
        """
        return self.model_copy(
            update={"content_keys": {d: self.content_keys[d] for d in device_ids}}
        )


def manifest_to_bytes(manifest: Manifest) -> bytes:
    """Canonical JSON of ``manifest`` (what goes into a signed envelope)."""
    return canonical_json(manifest.model_dump(mode="json"))


def manifest_from_bytes(data: bytes) -> Manifest:
    """Parse verified manifest bytes: canonical JSON (J1), then the strict schema (J2).

    Raises:
        NonCanonicalPayloadError: the bytes are not exactly canonical JSON (J1).
        ProtocolError: the value is not a valid manifest, strictly typed (J2, M1-M3).
    """
    return parse_signed_model(Manifest, data, what="manifest")
