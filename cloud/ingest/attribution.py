"""Device status and telemetry attributed by topic (as in ``cloud.deployment.evidence``).

The evidence module attributes statuses and resend requests for deployments; ingestion also
needs telemetry, under the same rules: the *topic* the broker authorised is the identity
(E1: a payload naming another device is dropped and counted ``identity_mismatch``), a live
repeat of a ``msg_id`` is dropped (E2, ``duplicate``), anything unparsable is ``malformed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.deployment.evidence import Attribution, DeviceStatus
from cloud.deployment.link import Incoming
from shared.errors import FedgeError
from shared.protocol import topics
from shared.protocol.codec import decode_message_as
from shared.protocol.messages import TelemetryMessage
from shared.protocol.topics import DeviceLeaf, TopicKind

__all__ = ["DeviceTelemetry", "IngestAttribution"]


@dataclass(frozen=True)
class DeviceTelemetry:
    """A telemetry message attributed to ``device_id`` by its topic."""

    device_id: str
    telemetry: TelemetryMessage


class IngestAttribution(Attribution):
    """:class:`Attribution` plus telemetry, and one entry point for what ingestion reads.

    ``dropped`` counts, by reason: ``bad_topic``, ``malformed``, ``identity_mismatch``,
    ``duplicate`` and ``unexpected`` (a device topic ingestion does not store).
    """

    def telemetry(self, msg: Incoming) -> DeviceTelemetry | None:
        """The attributed telemetry in ``msg``; None if it is not believable telemetry."""
        device_id = self._device_topic(msg, DeviceLeaf.TELEMETRY)
        if device_id is None:
            return None
        try:
            telemetry = decode_message_as(msg.payload, TelemetryMessage)
        except FedgeError:
            self._drop("malformed", msg.topic)
            return None
        if not self._believable(msg, device_id, telemetry.device_id, telemetry.msg_id):
            return None
        return DeviceTelemetry(device_id, telemetry)

    def classify(self, msg: Incoming) -> DeviceStatus | DeviceTelemetry | None:
        """The attributed status or telemetry in ``msg``; None (counted) for anything else."""
        try:
            parsed = topics.route(msg.topic)
        except FedgeError:
            self._drop("bad_topic", repr(msg.topic))
            return None
        if parsed.kind is TopicKind.DEVICE and parsed.leaf is DeviceLeaf.STATUS:
            return self.status(msg)
        if parsed.kind is TopicKind.DEVICE and parsed.leaf is DeviceLeaf.TELEMETRY:
            return self.telemetry(msg)
        self._drop("unexpected", msg.topic)
        return None
