"""Signed commands (``rollback``, ``report_missing``, ``drop_candidate``): payload, signing, checks.

A :class:`Command` travels as canonical JSON inside a :class:`~shared.artifacts.trust.Envelope`
signed by the coordinator key (root-certified for the ``coordinator`` role), carried by a
:class:`~shared.protocol.messages.CommandMessage`. :func:`verify_command` checks, in this
order (``docs/protocol.md`` §6): signature → trusted, unrevoked key (K1-K3) → canonical
bytes and strict schema (J1, J2) → expiry (K4) → addressed to this device or one of its
groups (K5) → sequence above the last accepted one (K6). Every action goes through this one
path; what an action needs of its fields (``drop_candidate`` names its ``artifact_id``) is
part of the strict schema (J2), so a malformed command is refused before it is acted on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.artifacts.canonical import SpecVersion, canonical_json, json_enum, parse_signed_model
from shared.artifacts.manifest import ArtifactId, Identifier
from shared.artifacts.trust import (
    COMMAND_TYPE,
    Envelope,
    Role,
    TrustStore,
    sign_envelope,
    verify_signed,
)
from shared.crypto import SigningKey
from shared.errors import ExpiredMetadataError, ReplayAttackError, WrongRecipientError

__all__ = ["Command", "CommandAction", "sign_command", "verify_command"]


class CommandAction(StrEnum):
    """What a command asks a device to do."""

    ROLLBACK = "rollback"  # revert to the previous committed slot
    REPORT_MISSING = "report_missing"  # publish a ResendRequest for an unfinished artifact
    DROP_CANDIDATE = "drop_candidate"  # drop the held shadow candidate ``artifact_id`` (§15 U2)


class Command(BaseModel):
    """The signed payload of a :class:`CommandMessage`.

    Exactly one of ``device_id`` and ``group`` addresses it. ``seq`` is strictly
    increasing per coordinator (e.g. milliseconds since the epoch); a device keeps the
    last accepted ``seq`` and refuses anything not above it. A ``drop_candidate`` must name
    the candidate it means (``artifact_id``) and carries no ``to_version``.
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
        if self.action is CommandAction.DROP_CANDIDATE and (
            self.artifact_id is None or self.to_version is not None
        ):  # the device must never guess which candidate the coordinator means
            raise ValueError("drop_candidate names artifact_id and no to_version")
        return self


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
