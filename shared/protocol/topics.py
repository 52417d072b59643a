"""Every MQTT topic fedge uses is built here, and nowhere else (DESIGN §5).

Topic root ``fedge/v1/``. Identifiers placed in a topic are validated so a device id can
never smuggle in a level separator or a wildcard (``/``, ``+``, ``#``) and so reach
another device's topics.

| topic | direction | retained |
|---|---|---|
| ``fedge/v1/devices/{device_id}/manifest`` | cloud → device | yes |
| ``fedge/v1/artifacts/{artifact_id}/chunks/{index}`` | cloud → devices | no |
| ``fedge/v1/devices/{device_id}/status`` | device → cloud | yes |
| ``fedge/v1/devices/{device_id}/telemetry`` | device → cloud | no |
| ``fedge/v1/devices/{device_id}/cmd`` | cloud → device | no |
| ``fedge/v1/devices/{device_id}/requests`` | device → cloud | no |
| ``fedge/v1/groups/{group}/cmd`` | cloud → devices of a group | no |

Every receiver parses a topic with :func:`route` (one grammar: exact level count, ASCII
identifiers, ASCII decimal chunk index), and attributes a device message to the device the
*topic* names, which the broker's ACL lets only that device's credentials publish to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import ProtocolError

__all__ = [
    "ROOT",
    "DeviceLeaf",
    "DeviceTopic",
    "Route",
    "TopicKind",
    "all_devices",
    "artifact_chunk",
    "artifact_chunks",
    "device_cmd",
    "device_manifest",
    "device_requests",
    "device_status",
    "device_telemetry",
    "group_cmd",
    "parse_chunk_topic",
    "parse_device_topic",
    "route",
    "validate_segment",
]

ROOT = "fedge/v1"

# Same alphabet as profile identifiers, plus '.' (versions, hashes): safe in every broker
# and on every file system; never '/', '+', '#' or control characters.
# fullmatch + ASCII: ``$`` would accept a trailing newline, ``\w``/``\d`` Unicode.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_ARTIFACT_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
# A chunk index: ASCII decimal, no sign, no leading zero, below MAX_CHUNKS (1024).
_INDEX = re.compile(r"0|[1-9][0-9]{0,3}", re.ASCII)
_MAX_INDEX = 1023


class DeviceLeaf(StrEnum):
    """The last level of a per-device topic."""

    MANIFEST = "manifest"
    STATUS = "status"
    TELEMETRY = "telemetry"
    CMD = "cmd"
    REQUESTS = "requests"


class TopicKind(StrEnum):
    """What a topic addresses."""

    DEVICE = "device"  # fedge/v1/devices/{device_id}/{leaf}
    CHUNK = "chunk"  # fedge/v1/artifacts/{artifact_id}/chunks/{index}
    GROUP_CMD = "group_cmd"  # fedge/v1/groups/{group}/cmd


@dataclass(frozen=True)
class DeviceTopic:
    """A parsed ``fedge/v1/devices/{device_id}/{leaf}`` topic."""

    device_id: str
    leaf: DeviceLeaf


def validate_segment(value: str, *, what: str = "identifier") -> str:
    """Return ``value`` if it is safe as one topic level.

    Raises:
        ProtocolError: empty, too long, or containing ``/``, ``+``, ``#`` or other
            characters outside ``[A-Za-z0-9._-]``.
    """
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ProtocolError(f"invalid {what} for a topic: {value[:80]!r}")
    return value


def _device(device_id: str, leaf: DeviceLeaf) -> str:
    return f"{ROOT}/devices/{validate_segment(device_id, what='device id')}/{leaf.value}"


def device_manifest(device_id: str) -> str:
    """Retained manifest of the model ``device_id`` should run."""
    return _device(device_id, DeviceLeaf.MANIFEST)


def device_status(device_id: str) -> str:
    """Retained status of ``device_id`` (also its last-will topic)."""
    return _device(device_id, DeviceLeaf.STATUS)


def device_telemetry(device_id: str) -> str:
    """Periodic telemetry of ``device_id``."""
    return _device(device_id, DeviceLeaf.TELEMETRY)


def device_cmd(device_id: str) -> str:
    """Commands addressed to ``device_id``."""
    return _device(device_id, DeviceLeaf.CMD)


def device_requests(device_id: str) -> str:
    """Device → cloud requests (missing chunks) of ``device_id``."""
    return _device(device_id, DeviceLeaf.REQUESTS)


def group_cmd(group: str) -> str:
    """Commands addressed to every device in ``group``."""
    return f"{ROOT}/groups/{validate_segment(group, what='group')}/cmd"


def artifact_chunk(artifact_id: str, index: int) -> str:
    """One chunk of an artifact."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= _MAX_INDEX:
        raise ProtocolError(f"invalid chunk index: {index!r}")
    return f"{ROOT}/artifacts/{_artifact_id(artifact_id)}/chunks/{index}"


def artifact_chunks(artifact_id: str) -> str:
    """Subscription filter for every chunk of one artifact."""
    return f"{ROOT}/artifacts/{_artifact_id(artifact_id)}/chunks/+"


def all_devices(leaf: DeviceLeaf) -> str:
    """Subscription filter for one leaf of every device (cloud side)."""
    return f"{ROOT}/devices/+/{leaf.value}"


def _artifact_id(value: str) -> str:
    if not isinstance(value, str) or not _ARTIFACT_ID.fullmatch(value):
        raise ProtocolError(f"invalid artifact id for a topic: {str(value)[:80]!r}")
    return value


@dataclass(frozen=True)
class Route:
    """A parsed concrete topic (see :func:`route`); fields not of its kind are None."""

    kind: TopicKind
    device_id: str | None = None
    leaf: DeviceLeaf | None = None
    artifact_id: str | None = None
    index: int | None = None
    group: str | None = None


_MAX_TOPIC = 512  # longer than any topic fedge builds; refused before splitting


def route(topic: str) -> Route:
    """Parse any concrete fedge topic — the one topic grammar of every receiver.

    Accepted: ``fedge/v1/devices/{id}/{manifest|status|telemetry|cmd|requests}``,
    ``fedge/v1/artifacts/{32 hex}/chunks/{index}`` (ASCII decimal, no leading zero,
    below 1024) and ``fedge/v1/groups/{group}/cmd``; ids by :func:`validate_segment`.

    Raises:
        ProtocolError: anything else (never another exception, whatever the input).
    """
    if not isinstance(topic, str) or len(topic) > _MAX_TOPIC:
        raise ProtocolError("not a fedge topic")
    parts = topic.split("/")
    if parts[:2] != ROOT.split("/"):
        raise ProtocolError(f"not a fedge topic: {topic[:80]!r}")
    rest = parts[2:]
    if len(rest) == 3 and rest[0] == "devices":
        try:
            leaf = DeviceLeaf(rest[2])
        except ValueError as exc:
            raise ProtocolError(f"unknown device topic leaf: {rest[2][:32]!r}") from exc
        device_id = validate_segment(rest[1], what="device id")
        return Route(TopicKind.DEVICE, device_id=device_id, leaf=leaf)
    if len(rest) == 4 and rest[0] == "artifacts" and rest[2] == "chunks":
        if not _INDEX.fullmatch(rest[3]) or int(rest[3]) > _MAX_INDEX:
            raise ProtocolError("invalid chunk index in topic")
        return Route(TopicKind.CHUNK, artifact_id=_artifact_id(rest[1]), index=int(rest[3]))
    if len(rest) == 3 and rest[0] == "groups" and rest[2] == "cmd":
        return Route(TopicKind.GROUP_CMD, group=validate_segment(rest[1], what="group"))
    raise ProtocolError(f"not a fedge topic: {topic[:80]!r}")


def parse_chunk_topic(topic: str) -> tuple[str, int]:
    """``(artifact_id, index)`` of a chunk topic (by :func:`route`).

    Raises:
        ProtocolError: any other topic.
    """
    parsed = route(topic)
    if parsed.kind is not TopicKind.CHUNK or parsed.artifact_id is None or parsed.index is None:
        raise ProtocolError("not a chunk topic")
    return parsed.artifact_id, parsed.index


def parse_device_topic(topic: str) -> DeviceTopic:
    """Parse a concrete per-device topic.

    Raises:
        ProtocolError: not a ``fedge/v1/devices/{id}/{leaf}`` topic.
    """
    parsed = route(topic)
    if parsed.kind is not TopicKind.DEVICE or parsed.device_id is None or parsed.leaf is None:
        raise ProtocolError(f"not a device topic: {topic[:80]!r}")
    return DeviceTopic(device_id=parsed.device_id, leaf=parsed.leaf)
