"""Topics of the deployment plane (issue 4), to be merged into :mod:`shared.protocol.topics`.

The cloud → device topics already live in :mod:`shared.protocol.topics` and are re-exported
here so delivery code imports from one place. New here: the device → cloud ``requests``
topic on which an updater asks for missing chunks (a device may publish only to its own
``status``, ``telemetry`` and ``requests``; the broker ACL enforces it).

| topic | direction | QoS | retained |
|---|---|---|---|
| ``fedge/v1/devices/{device_id}/manifest`` | cloud → device | 1 | yes |
| ``fedge/v1/artifacts/{artifact_id}/chunks/{index}`` | cloud → devices | 1 | no |
| ``fedge/v1/devices/{device_id}/cmd`` | cloud → device | 1 | no |
| ``fedge/v1/groups/{group}/cmd`` | cloud → group | 1 | no |
| ``fedge/v1/devices/{device_id}/requests`` | device → cloud | 1 | no |
"""

from __future__ import annotations

from shared.artifacts.manifest import MAX_CHUNKS
from shared.errors import ProtocolError
from shared.numbers import parse_ascii_uint
from shared.protocol.topics import (
    ROOT,
    artifact_chunk,
    artifact_chunks,
    device_cmd,
    device_manifest,
    group_cmd,
    validate_segment,
)

__all__ = [
    "REQUESTS_LEAF",
    "all_device_requests",
    "artifact_chunk",
    "artifact_chunks",
    "device_cmd",
    "device_manifest",
    "device_requests",
    "group_cmd",
    "parse_chunk_topic",
]

REQUESTS_LEAF = "requests"


def device_requests(device_id: str) -> str:
    """Device → cloud requests (missing chunks) of ``device_id``."""
    return f"{ROOT}/devices/{validate_segment(device_id, what='device id')}/{REQUESTS_LEAF}"


def all_device_requests() -> str:
    """Cloud subscription filter for every device's requests."""
    return f"{ROOT}/devices/+/{REQUESTS_LEAF}"


def parse_chunk_topic(topic: str) -> tuple[str, int]:
    """Parse ``fedge/v1/artifacts/{artifact_id}/chunks/{index}`` into (artifact id, index).

    Raises:
        ProtocolError: any other topic, or an index that is not a canonical ASCII decimal
            below ``MAX_CHUNKS`` (rule N1: ``"²"`` or ``"١"`` are refused, not crashed on).
    """
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 6 or parts[:3] != ["fedge", "v1", "artifacts"] or parts[4] != "chunks":
        raise ProtocolError("not a chunk topic")
    index = parse_ascii_uint(parts[5], what="chunk index in topic", max_value=MAX_CHUNKS - 1)
    return validate_segment(parts[3], what="artifact id"), index
