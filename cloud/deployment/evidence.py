"""What devices say, attributed by the topic the broker authorised — never by the payload.

The broker's ACL lets only device D's credentials publish on ``fedge/v1/devices/D/…``
(``cloud/broker.py`` rule B3), so the *topic* is the authenticated identity. A payload
whose ``device_id`` disagrees with its topic is dropped, logged and counted, never
believed (``docs/protocol.md`` §9, rule E1). Every topic is parsed by the one grammar,
:func:`shared.protocol.topics.route`; a live duplicate (same ``msg_id``, re-sent by the
device's outbox after a lost PUBACK) is dropped too (E2).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from cloud.deployment.link import Incoming
from shared.errors import FedgeError
from shared.protocol import Deduplicator, topics
from shared.protocol.codec import decode_message_as
from shared.protocol.messages import ResendRequest, StatusMessage
from shared.protocol.topics import DeviceLeaf, TopicKind

__all__ = ["Attribution", "DeviceRequest", "DeviceStatus"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceStatus:
    """A status attributed to ``device_id`` by its topic (``retained``: from the store)."""

    device_id: str
    status: StatusMessage
    retained: bool


@dataclass(frozen=True)
class DeviceRequest:
    """A resend request attributed to ``device_id`` by its topic."""

    device_id: str
    request: ResendRequest


class Attribution:
    """Parses device → cloud messages and attributes them; counts what it drops.

    Attributes:
        dropped: Messages dropped, by reason (``bad_topic``, ``malformed``,
            ``identity_mismatch``, ``duplicate``, ``unexpected``).
    """

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self._seen = Deduplicator()

    def _drop(self, reason: str, topic: str) -> None:
        self.dropped[reason] += 1
        logger.warning("dropped a device message on %s: %s", topic[:120], reason)

    def _device_topic(self, msg: Incoming, leaf: DeviceLeaf) -> str | None:
        try:
            parsed = topics.route(msg.topic)
        except FedgeError:
            self._drop("bad_topic", repr(msg.topic))
            return None
        if parsed.kind is not TopicKind.DEVICE or parsed.leaf is not leaf:
            return None
        return parsed.device_id

    def _believable(self, msg: Incoming, device_id: str, claimed: str, msg_id: str) -> bool:
        if claimed != device_id:  # E1: the topic is the identity
            self._drop("identity_mismatch", msg.topic)
            return False
        # E2: a re-sent live copy. A retained copy is the broker's answer to a (re)subscribe,
        # not a repeat, so it is never suppressed.
        if not msg.retained and not self._seen.first_time(f"{device_id}/{msg_id}"):
            self.dropped["duplicate"] += 1
            return False
        return True

    def status(self, msg: Incoming) -> DeviceStatus | None:
        """The attributed status in ``msg``; None if it is not a believable status."""
        device_id = self._device_topic(msg, DeviceLeaf.STATUS)
        if device_id is None:
            return None
        try:
            status = decode_message_as(msg.payload, StatusMessage)
        except FedgeError:
            self._drop("malformed", msg.topic)
            return None
        if not self._believable(msg, device_id, status.device_id, status.msg_id):
            return None
        return DeviceStatus(device_id, status, msg.retained)

    def request(self, msg: Incoming) -> DeviceRequest | None:
        """The attributed resend request in ``msg``; None if it is not a believable one."""
        device_id = self._device_topic(msg, DeviceLeaf.REQUESTS)
        if device_id is None:
            return None
        try:
            request = decode_message_as(msg.payload, ResendRequest)
        except FedgeError:
            self._drop("malformed", msg.topic)
            return None
        if not self._believable(msg, device_id, request.device_id, request.msg_id):
            return None
        return DeviceRequest(device_id, request)
