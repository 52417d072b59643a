"""An in-memory MQTT broker: retained messages, ``+``/``#`` wildcards and a per-user ACL.

For unit tests of coordinator and device logic without a Mosquitto process. The same logic
also runs against real Mosquitto in ``tests/security``. Delivery is synchronous and in
order; QoS and sessions are not modelled.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field

from paho.mqtt.client import topic_matches_sub

from cloud.deployment.link import Incoming

__all__ = ["FakeClient", "InMemoryBroker", "NotAuthorizedError"]


class NotAuthorizedError(Exception):
    """The ACL refused a publish (Mosquitto answers PUBACK 135)."""


@dataclass
class FakeClient:
    """One connected client: an inbox (like ``CoordinatorLink``) and its subscriptions."""

    broker: InMemoryBroker
    username: str
    inbox: queue.Queue[Incoming] = field(default_factory=queue.Queue)
    bytes_sent: int = 0
    filters: list[str] = field(default_factory=list)
    published: list[tuple[str, bytes, bool]] = field(default_factory=list)
    # When set, messages go to this callback (synchronously) instead of the inbox: a fake
    # device can answer a manifest inside the coordinator's publish call.
    on_message: Callable[[Incoming], None] | None = None

    def deliver(self, message: Incoming) -> None:
        """Hand one message to the callback or the inbox."""
        if self.on_message is not None:
            self.on_message(message)
        else:
            self.inbox.put(message)

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe; retained messages matching it are delivered at once (retained)."""
        self.filters.append(topic_filter)
        for topic, payload in sorted(self.broker.retained.items()):
            if topic_matches_sub(topic_filter, topic):
                self.deliver(Incoming(topic, payload, True))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish through the broker (ACL-checked)."""
        self.broker.publish(self.username, topic, payload, retain=retain)
        self.bytes_sent += len(payload)
        self.published.append((topic, payload, retain))


class InMemoryBroker:
    """Routes publishes to matching subscribers and keeps the last retained message per topic.

    Args:
        may_publish: ACL: ``(username, topic) -> bool``; everything is allowed by default.
    """

    def __init__(self, may_publish: Callable[[str, str], bool] = lambda _u, _t: True) -> None:
        self.retained: dict[str, bytes] = {}
        self.clients: list[FakeClient] = []
        self._may_publish = may_publish

    def connect(self, username: str, subscriptions: list[str] | None = None) -> FakeClient:
        """A new client, subscribed to ``subscriptions``."""
        client = FakeClient(self, username)
        self.clients.append(client)
        for topic_filter in subscriptions or []:
            client.subscribe(topic_filter)
        return client

    def publish(self, username: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Deliver to every matching subscriber; keep it when ``retain``.

        Raises:
            NotAuthorizedError: the ACL refuses ``username`` on ``topic``.
        """
        if not self._may_publish(username, topic):
            raise NotAuthorizedError(topic)
        if retain:
            self.retained[topic] = payload
        for client in list(self.clients):
            if any(topic_matches_sub(f, topic) for f in client.filters):
                client.deliver(Incoming(topic, payload, False))


def device_acl(username: str, topic: str) -> bool:
    """The generated broker ACL's publish rule (``cloud/broker.py`` B3, B4) in one line."""
    if username == "fedge-coordinator":
        return topic.startswith("fedge/v1/")
    leaves = ("status", "telemetry", "requests")
    return any(topic == f"fedge/v1/devices/{username}/{leaf}" for leaf in leaves)
