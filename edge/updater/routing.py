"""Hand a raw deployment-plane message to the updater according to its topic.

Used by the host of the :class:`~edge.updater.engine.Updater`, the agent's loop
(:class:`~edge.agent.Agent`), for exactly these topics: the device's manifest, its own
and its groups' command topics, artifact chunks.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge.updater.engine import Updater
from shared.errors import ProtocolError
from shared.protocol import topics
from shared.protocol.topics import parse_chunk_topic

__all__ = ["dispatch"]


def dispatch(
    updater: Updater, topic: str, payload: bytes, *, device_id: str, groups: Iterable[str]
) -> bool:
    """Pass ``payload`` to the updater's handler for ``topic``.

    Returns:
        False when ``topic`` is none of this device's deployment topics (nothing done).
        The updater verifies the payload itself and reports refusals on the status.
    """
    if topic == topics.device_manifest(device_id):
        updater.handle_manifest(payload)
        return True
    if topic == topics.device_cmd(device_id) or any(topic == topics.group_cmd(g) for g in groups):
        updater.handle_command(payload)  # K1-K6 inside
        return True
    try:
        where = parse_chunk_topic(topic)
    except ProtocolError:
        return False
    updater.handle_chunk(payload, topic=where)
    return True
