"""Deployment-plane messages: signed manifests, chunks, signed commands, resend requests.

JSON messages follow the conventions of :mod:`shared.protocol.messages` (``kind`` tag,
``v``, ``msg_id``, ``device_id``, ``sent_at``) so they can join its discriminated union.
Chunks are binary (see :mod:`shared.artifacts.chunking`): base64 would cost a third more
bytes on the largest messages. Every decoder is bounded and raises only
:class:`ProtocolError`.

Commands are signed by the coordinator key (root-certified for the ``coordinator`` role)
and verified by :func:`verify_command` in this order: signature → trusted, unrevoked key
→ strict canonical parse of the signed bytes (J1, J2) → expiry → addressed to this device
or one of its groups → sequence above the last accepted one (replay).
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.artifacts.canonical import (
    SpecVersion,
    canonical_json,
    json_enum,
    parse_signed_model,
)
from shared.artifacts.chunking import (
    SealedChunk,
    sealed_chunk_from_bytes,
    sealed_chunk_to_bytes,
)
from shared.artifacts.manifest import MAX_CHUNKS, ArtifactId, Identifier
from shared.artifacts.trust import (
    COMMAND_TYPE,
    Envelope,
    Role,
    TrustStore,
    sign_envelope,
    verify_signed,
)
from shared.crypto import SigningKey
from shared.errors import (
    ExpiredMetadataError,
    ProtocolError,
    ReplayAttackError,
    WrongRecipientError,
)

__all__ = [
    "MAX_DELIVERY_BYTES",
    "Command",
    "CommandAction",
    "CommandMessage",
    "DeliveryKind",
    "DeliveryMessage",
    "ManifestMessage",
    "ResendRequest",
    "decode_chunk",
    "decode_delivery",
    "decode_delivery_as",
    "encode_chunk",
    "encode_delivery",
    "sign_command",
    "verify_command",
]

#: Same bound as the status/telemetry codec: < 128 KB (AWS IoT Core) with room for topic.
MAX_DELIVERY_BYTES = 128_000


class DeliveryKind(StrEnum):
    """Discriminator values of the deployment-plane JSON messages."""

    MANIFEST = "manifest"
    COMMAND = "command"
    RESEND_REQUEST = "resend_request"


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    msg_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{8,64}$")] = Field(
        default_factory=lambda: uuid.uuid4().hex
    )
    device_id: Identifier
    sent_at: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ManifestMessage(_Base):
    """Retained on ``devices/{id}/manifest``: the signed manifest this device should run."""

    kind: Literal[DeliveryKind.MANIFEST] = DeliveryKind.MANIFEST
    envelope: Envelope


class CommandMessage(_Base):
    """On ``devices/{id}/cmd`` or ``groups/{g}/cmd``: a signed :class:`Command`."""

    kind: Literal[DeliveryKind.COMMAND] = DeliveryKind.COMMAND
    envelope: Envelope


class ResendRequest(_Base):
    """On ``devices/{id}/requests``: the chunks a device is still missing."""

    kind: Literal[DeliveryKind.RESEND_REQUEST] = DeliveryKind.RESEND_REQUEST
    artifact_id: ArtifactId
    missing: tuple[Annotated[int, Field(ge=0, lt=MAX_CHUNKS)], ...] = Field(
        min_length=1, max_length=MAX_CHUNKS
    )


DeliveryMessage = Annotated[
    ManifestMessage | CommandMessage | ResendRequest, Field(discriminator="kind")
]
_ADAPTER: TypeAdapter[ManifestMessage | CommandMessage | ResendRequest] = TypeAdapter(
    DeliveryMessage
)
_M = TypeVar("_M", ManifestMessage, CommandMessage, ResendRequest)


class CommandAction(StrEnum):
    """What a command asks a device to do."""

    ROLLBACK = "rollback"  # revert to the previous committed slot
    REPORT_MISSING = "report_missing"  # publish a ResendRequest for an unfinished artifact


class Command(BaseModel):
    """The signed payload of a :class:`CommandMessage`.

    Exactly one of ``device_id`` and ``group`` addresses it. ``seq`` is strictly
    increasing per coordinator (e.g. milliseconds since the epoch); a device keeps the
    last accepted ``seq`` and refuses anything not above it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec_version: SpecVersion = 1
    action: Annotated[CommandAction, json_enum(CommandAction)]  # J2: a JSON string on the wire
    device_id: Identifier | None = None
    group: Identifier | None = None
    seq: int = Field(ge=1, le=2**63 - 1)
    issued_at: int = Field(ge=0)
    expires: int = Field(ge=0)
    artifact_id: ArtifactId | None = None
    to_version: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> Command:
        if (self.device_id is None) == (self.group is None):
            raise ValueError("exactly one of device_id and group")
        return self


def encode_delivery(message: ManifestMessage | CommandMessage | ResendRequest) -> bytes:
    """Compact JSON of a delivery message; raises :class:`ProtocolError` if too large."""
    data = message.model_dump_json(exclude_none=True).encode()
    if len(data) > MAX_DELIVERY_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is over the limit")
    return data


def decode_delivery(data: bytes) -> ManifestMessage | CommandMessage | ResendRequest:
    """Parse a delivery message; any bad input raises :class:`ProtocolError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("payload must be bytes")
    if not 0 < len(data) <= MAX_DELIVERY_BYTES:
        raise ProtocolError("payload size out of range")
    try:
        return _ADAPTER.validate_json(bytes(data))
    except ValidationError as exc:
        raise ProtocolError(f"invalid delivery message ({exc.error_count()} errors)") from exc
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("invalid delivery message") from exc


def decode_delivery_as(data: bytes, cls: type[_M]) -> _M:
    """Parse a delivery message that must be of class ``cls``."""
    message = decode_delivery(data)
    if not isinstance(message, cls):
        raise ProtocolError(f"expected {cls.__name__}")
    return message


def encode_chunk(chunk: SealedChunk) -> bytes:
    """Binary chunk message (layout in :mod:`shared.artifacts.chunking`)."""
    return sealed_chunk_to_bytes(chunk)


def decode_chunk(data: bytes) -> SealedChunk:
    """Parse a binary chunk message; raises :class:`ProtocolError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("payload must be bytes")
    return sealed_chunk_from_bytes(bytes(data))


def sign_command(command: Command, key: SigningKey, *, certificate: Envelope) -> Envelope:
    """Sign ``command`` with the coordinator key, attaching its root-signed certificate."""
    payload = canonical_json(command.model_dump(mode="json"))
    return sign_envelope(COMMAND_TYPE, payload, key, certificate=certificate)


def verify_command(
    envelope: Envelope,
    trust: TrustStore,
    *,
    device_id: str,
    groups: frozenset[str] = frozenset(),
    last_seq: int,
    now: int,
) -> Command:
    """Verify a signed command for this device.

    Raises:
        UnknownKeyError, BadSignatureError, UntrustedKeyError, RevokedKeyError: K1-K3.
        NonCanonicalPayloadError: the signed payload is not canonical JSON (J1).
        ProtocolError: the payload is not a valid command, strictly typed (J2).
        ExpiredMetadataError: K4, past ``expires``.
        WrongRecipientError: K5, addressed to another device or a group not joined.
        ReplayAttackError: K6, ``seq`` not above ``last_seq``.
    """
    payload, _ = verify_signed(  # K1-K3
        envelope, trust, payload_type=COMMAND_TYPE, role=Role.COORDINATOR, now=now
    )
    command = parse_signed_model(Command, payload, what="command")  # J1, J2: after K1-K3
    if not command.issued_at <= now < command.expires:  # K4
        raise ExpiredMetadataError("command expired", code="expired_command")
    if command.device_id is not None and command.device_id != device_id:  # K5
        raise WrongRecipientError("command for another device")
    if command.group is not None and command.group not in groups:
        raise WrongRecipientError("command for a group this device is not in")
    if command.seq <= last_seq:  # K6
        raise ReplayAttackError("command sequence already used")
    return command
