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
| ``fedge/v1/groups/{group}/cmd`` | cloud → devices of a group | no |
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
    "all_devices",
    "artifact_chunk",
    "artifact_chunks",
    "device_cmd",
    "device_manifest",
    "device_status",
    "device_telemetry",
    "group_cmd",
    "parse_device_topic",
    "validate_segment",
]

ROOT = "fedge/v1"

# Same alphabet as profile identifiers, plus '.' (versions, hashes): safe in every broker
# and on every file system; never '/', '+', '#' or control characters.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DeviceLeaf(StrEnum):
    """The last level of a per-device topic."""

    MANIFEST = "manifest"
    STATUS = "status"
    TELEMETRY = "telemetry"
    CMD = "cmd"


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
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ProtocolError(f"invalid {what} for a topic: {value!r}")
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


def group_cmd(group: str) -> str:
    """Commands addressed to every device in ``group``."""
    return f"{ROOT}/groups/{validate_segment(group, what='group')}/cmd"


def artifact_chunk(artifact_id: str, index: int) -> str:
    """One chunk of an artifact."""
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ProtocolError(f"invalid chunk index: {index!r}")
    return f"{ROOT}/artifacts/{validate_segment(artifact_id, what='artifact id')}/chunks/{index}"


def artifact_chunks(artifact_id: str) -> str:
    """Subscription filter for every chunk of one artifact."""
    return f"{ROOT}/artifacts/{validate_segment(artifact_id, what='artifact id')}/chunks/+"


def all_devices(leaf: DeviceLeaf) -> str:
    """Subscription filter for one leaf of every device (cloud side)."""
    return f"{ROOT}/devices/+/{leaf.value}"


def parse_device_topic(topic: str) -> DeviceTopic:
    """Parse a concrete per-device topic.

    Raises:
        ProtocolError: not a ``fedge/v1/devices/{id}/{leaf}`` topic.
    """
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 5 or "/".join(parts[:3]) != f"{ROOT}/devices":
        raise ProtocolError(f"not a device topic: {topic!r}")
    try:
        leaf = DeviceLeaf(parts[4])
    except ValueError as exc:
        raise ProtocolError(f"unknown device topic leaf: {parts[4]!r}") from exc
    return DeviceTopic(device_id=validate_segment(parts[3], what="device id"), leaf=leaf)
