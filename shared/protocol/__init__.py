"""The versioned MQTT wire contract: topics, message models and the bounded codec.

Every topic string is built in :mod:`shared.protocol.topics`; every payload is a frozen
pydantic model from :mod:`shared.protocol.messages` turned into bytes (and back) only by
:mod:`shared.protocol.codec`.
"""

from shared.protocol.codec import (
    MAX_PAYLOAD_BYTES,
    decode_message,
    decode_message_as,
    encode_message,
)
from shared.protocol.dedupe import Deduplicator
from shared.protocol.messages import (
    DeviceState,
    LatencyStats,
    Message,
    MessageKind,
    StatusMessage,
    TelemetryMessage,
    new_msg_id,
)

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Deduplicator",
    "DeviceState",
    "LatencyStats",
    "Message",
    "MessageKind",
    "StatusMessage",
    "TelemetryMessage",
    "decode_message",
    "decode_message_as",
    "encode_message",
    "new_msg_id",
]
