"""One strict grammar for every fedge identifier (pure: no I/O).

Device, group, model, rollout, artifact and hardware ids end up as MQTT topic levels,
Mosquitto ACL lines (``user <id>``), TLS certificate common names, MQTT usernames and
client ids, and directory names. One grammar, checked in one way, keeps all of them safe:

- ASCII only: ``[A-Za-z0-9]`` first, then ``[A-Za-z0-9._-]``; 1 to 64 characters. No
  ``/``, ``+``, ``#`` (topic separators and wildcards), no ``$`` (broker-internal topics),
  no whitespace or control characters (a trailing newline would end an ACL line early and
  start a new one), no Unicode look-alikes (``K`` KELVIN SIGN is not ``K``).
- Always an anchored *full* match (:func:`re.fullmatch` with :data:`re.ASCII`), never
  ``^...$``: Python's ``$`` also matches just before a trailing ``"\\n"``, so
  ``re.match(r"^[a-z]+$", "dev\\n")`` succeeds.

Some syntactically valid names are reserved (:data:`RESERVED_NAMES`, and any name
starting with ``fedge-``): the broker accounts of the coordinator and the monitor, and
words that read as "everyone". Enrollment refuses them, so a device can never take
over a system account's ACL section or certificate name.

For pydantic models, :data:`IdentifierField` (and its aliases such as
:data:`DeviceIdField`) applies the same check.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Final

from pydantic import AfterValidator, Strict, WithJsonSchema

from shared.errors import InvalidIdentifierError, ReservedNameError

__all__ = [
    "COORDINATOR_ACCOUNT",
    "IDENTIFIER_PATTERN",
    "IDENTIFIER_RE",
    "MAX_IDENTIFIER_LENGTH",
    "MONITOR_ACCOUNT",
    "RESERVED_NAMES",
    "RESERVED_PREFIX",
    "ArtifactIdField",
    "DeviceIdField",
    "GroupIdField",
    "HardwareIdField",
    "IdentifierField",
    "IdentifierKind",
    "ModelIdField",
    "RolloutIdField",
    "check_identifier",
    "check_new_name",
    "is_identifier",
    "is_reserved",
]

MAX_IDENTIFIER_LENGTH: Final = 64

#: The grammar, unanchored: use it only with :func:`re.fullmatch` (see :data:`IDENTIFIER_RE`).
IDENTIFIER_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"

#: Compiled with ``re.ASCII`` so that adding ``re.IGNORECASE`` later can never let
#: ``K`` (U+212A) or ``ſ`` (U+017F) match ``[A-Za-z]``. Use ``IDENTIFIER_RE.fullmatch``.
IDENTIFIER_RE: Final = re.compile(IDENTIFIER_PATTERN, re.ASCII)

#: The coordinator's broker account (TLS client certificate CN, MQTT username/client id).
COORDINATOR_ACCOUNT: Final = "fedge-coordinator"
#: The read-only observer account (dashboards, tests): may read ``fedge/v1/#``, write nothing.
MONITOR_ACCOUNT: Final = "fedge-monitor"
#: Every name starting with this (case-insensitively) is reserved for system accounts.
RESERVED_PREFIX: Final = "fedge-"

#: Names enrollment refuses (compared case-insensitively), besides the ``fedge-`` prefix.
RESERVED_NAMES: Final = frozenset(
    {
        COORDINATOR_ACCOUNT,
        MONITOR_ACCOUNT,
        # Words that read as "every device" or as a system role in topics, ACLs and logs.
        "all",
        "any",
        "everyone",
        "none",
        "broadcast",
        "coordinator",
        "monitor",
        "broker",
        "admin",
        "root",
        "mosquitto",
    }
)

_RESERVED_WORDS: Final = RESERVED_NAMES - {COORDINATOR_ACCOUNT, MONITOR_ACCOUNT}


class IdentifierKind(StrEnum):
    """What an identifier names (used in error messages)."""

    DEVICE = "device id"
    GROUP = "group"
    TAG = "tag"
    MODEL = "model id"
    ROLLOUT = "rollout id"
    ARTIFACT = "artifact id"
    HARDWARE = "hardware id"


def is_identifier(value: object) -> bool:
    """Whether ``value`` is a ``str`` that fully matches the grammar."""
    return isinstance(value, str) and IDENTIFIER_RE.fullmatch(value) is not None


def check_identifier(value: object, kind: IdentifierKind) -> str:
    """Return ``value`` unchanged if it is a valid identifier.

    Args:
        value: The candidate (anything: a value read from JSON or a CLI is not trusted).
        kind: What it names, for the message.

    Raises:
        InvalidIdentifierError: not a ``str``, empty, too long, or outside the grammar.
    """
    if not is_identifier(value):
        # repr() shows a trailing "\n" or a look-alike; cut it so a huge value stays short.
        shown = repr(value)[:80]
        raise InvalidIdentifierError(
            f"invalid {kind} {shown}: use 1-{MAX_IDENTIFIER_LENGTH} ASCII characters "
            "[A-Za-z0-9._-], starting with a letter or digit"
        )
    assert isinstance(value, str)  # is_identifier checked it; narrows the type for mypy
    return value


def is_reserved(name: str) -> bool:
    """Whether ``name`` is reserved for a system account or a collective word."""
    folded = name.lower()
    return folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIX)


def check_new_name(value: object, kind: IdentifierKind) -> str:
    """:func:`check_identifier`, and refuse reserved names (for names being created).

    Raises:
        InvalidIdentifierError: outside the grammar.
        ReservedNameError: a reserved name (see :data:`RESERVED_NAMES`).
    """
    name = check_identifier(value, kind)
    if is_reserved(name):
        raise ReservedNameError(
            f"{kind} {name!r} is reserved: names starting with {RESERVED_PREFIX!r} belong to "
            f"system accounts, and {', '.join(sorted(_RESERVED_WORDS))} are reserved words"
        )
    return name


def _pydantic_check(value: str) -> str:
    # pydantic reports ValueError as a ValidationError; a FedgeError would escape it.
    if IDENTIFIER_RE.fullmatch(value) is None:
        raise ValueError(
            f"must be 1-{MAX_IDENTIFIER_LENGTH} ASCII characters [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return value


#: A pydantic field type with the same grammar. The check is a Python ``fullmatch``
#: (not ``Field(pattern=...)``), so it holds whatever ``regex_engine`` a model configures.
IdentifierField = Annotated[
    str,
    Strict(),
    AfterValidator(_pydantic_check),
    WithJsonSchema(
        {"type": "string", "pattern": f"^{IDENTIFIER_PATTERN}$", "maxLength": 64}, mode="validation"
    ),
]
DeviceIdField = IdentifierField
GroupIdField = IdentifierField
ModelIdField = IdentifierField
RolloutIdField = IdentifierField
ArtifactIdField = IdentifierField
HardwareIdField = IdentifierField
