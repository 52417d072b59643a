"""The agent's durable, at-least-once delivery: outbox rows handed to paho until PUBACK.

Every outgoing message is first stored in the :class:`~edge.outbox.Outbox`, so it survives
an outage or a restart; while connected, the agent loop hands the oldest pending rows to
paho, at most ``max_inflight`` at a time, and a row is deleted only when the broker
acknowledges it. Only the agent loop calls :class:`AgentDelivery`, so no lock guards its
in-flight table.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass

from pydantic import BaseModel

from edge.agent_config import AgentConfig
from edge.messaging import LinkEvent, MqttLink, parse_broker_url
from edge.outbox import Outbox
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import StatusMessage

__all__ = ["AgentDelivery", "Outgoing"]

logger = logging.getLogger("edge.agent")  # one logger for the whole agent, as before the split


@dataclass(frozen=True)
class Outgoing:
    """A message to deliver: its topic and the flags its outbox row keeps."""

    topic: str
    message: BaseModel
    retain: bool
    droppable: bool  # the outbox may drop it first when full (telemetry, never a status)


class AgentDelivery:
    """The outbox, the MQTT link and paho's in-flight table (mid -> outbox row id).

    Args:
        outbox: Where messages wait until the broker acknowledges them.
        link: Publishes them.
        max_inflight: Most messages handed to paho and not yet acknowledged.
    """

    def __init__(self, outbox: Outbox, link: MqttLink, *, max_inflight: int) -> None:
        self.outbox = outbox
        self.link = link
        self._max_inflight = max_inflight
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id

    @classmethod
    def open(
        cls,
        config: AgentConfig,
        events: queue.Queue[LinkEvent | Outgoing | None],
        *,
        will: StatusMessage,
    ) -> AgentDelivery:
        """Open the outbox in the state directory, then the link to the configured broker.

        Args:
            config: The agent's settings (broker, credentials, TLS, outbox limits).
            events: The agent loop's queue, where the link's network thread puts its events.
            will: The status the broker publishes, retained, if the connection is lost.

        Raises:
            FedgeError: the outbox cannot be opened or the broker URL is invalid.
        """
        outbox = Outbox(
            config.state_dir / "outbox.sqlite3", max_messages=config.outbox_max_messages
        )
        link = MqttLink(
            client_id=config.device_id,
            broker=parse_broker_url(config.broker_url),
            events=events,  # type: ignore[arg-type]  # the queue also carries Outgoing
            will=(topics.device_status(config.device_id), encode_message(will)),
            username=config.username,
            password=config.password,
            cafile=config.cafile,
            certfile=config.certfile,
            keyfile=config.keyfile,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
            keepalive_s=config.keepalive_s,
        )
        return cls(outbox, link, max_inflight=config.max_inflight)

    def store(self, send: Outgoing) -> None:
        """Add a message to the outbox; a later :meth:`flush` publishes it."""
        payload = encode_message(send.message)
        msg_id = str(getattr(send.message, "msg_id", "")) or payload.hex()[:32]
        self.outbox.enqueue(
            send.topic, payload, msg_id=msg_id, retain=send.retain, droppable=send.droppable
        )

    def flush(self) -> None:
        """Hand the oldest pending outbox messages to paho, up to ``max_inflight``.

        The agent calls it only while connected: offline, paho would hold them in memory
        (lost on a restart), so they wait in the outbox instead.
        """
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        in_flight_rows = frozenset(self._inflight.values())
        for item in self.outbox.pending(limit=room, exclude=in_flight_rows):
            mid = self.link.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if mid is None:
                return
            self._inflight[mid] = item.row_id
            self.outbox.mark_attempt(item.row_id)

    def published(self, mid: int, *, failed: bool, reason: str | None) -> None:
        """The broker answered the publish ``mid``: its outbox row is done either way."""
        row_id = self._inflight.pop(mid, None)
        if row_id is not None:
            if failed:  # the broker refused it for good (e.g. ACL): retrying is futile
                logger.error("broker rejected outbox message %d: %s", row_id, reason)
            self.outbox.ack(row_id)

    @property
    def settled(self) -> bool:
        """Nothing left to deliver: no message in flight and none pending in the outbox."""
        return not self._inflight and not len(self.outbox)
