"""A thin MQTT 5 client for the agent: connect, last will, reconnect with backoff, events.

The session is persistent (``clean_start=False``, session expiry one hour), so QoS 1
messages sent while the device is briefly offline (e.g. artifact chunks) are queued by the
broker. Manifests, chunks and signed commands are passed on undecoded
(:attr:`EventKind.RAW`): the updater verifies them itself.

Reconnection is paho's own loop (``loop_start`` + ``reconnect_delay_set``): exponential
backoff from ``reconnect_min_s`` doubling to ``reconnect_max_s``. QoS 1 messages that are
in flight when a connection drops are retransmitted by paho after the reconnect (with the
DUP flag), so the agent does not publish them a second time itself.
"""

from __future__ import annotations

import logging
import queue
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.errors import ConfigError, ProtocolError
from shared.numbers import parse_ascii_uint
from shared.protocol.codec import decode_message
from shared.protocol.messages import Message
from shared.protocol.topics import ROOT

__all__ = ["BrokerAddress", "EventKind", "LinkEvent", "MqttLink", "parse_broker_url"]

logger = logging.getLogger(__name__)


class _PahoLog:
    """paho's log, with its per-attempt reconnect noise demoted to DEBUG.

    While the broker is unreachable paho logs an ERROR for every reconnect attempt
    ("Client is not connected"); the agent already logs the disconnect once, as a warning.
    """

    def __init__(self, target: logging.Logger) -> None:
        self._target = target

    def log(self, level: int, msg: str, *args: object) -> None:
        if level >= logging.ERROR and "not connected" in str(msg):
            level = logging.DEBUG
        self._target.log(level, msg, *args)

    def isEnabledFor(self, level: int) -> bool:  # the logging.Logger API paho calls
        return self._target.isEnabledFor(level)


SESSION_EXPIRY_S = 3600
"""Persistent session: the broker queues QoS 1 messages (chunks) across short outages."""

_ARTIFACTS_PREFIX = f"{ROOT}/artifacts/"
_MANIFEST_SUFFIX = "/manifest"
_DEVICES_PREFIX = f"{ROOT}/devices/"
_GROUPS_PREFIX = f"{ROOT}/groups/"
_CMD_SUFFIX = "/cmd"


def is_raw_topic(topic: str) -> bool:
    """Whether ``topic`` carries deployment-plane payloads the updater decodes itself."""
    return (
        topic.startswith(_ARTIFACTS_PREFIX)
        or (topic.startswith(_DEVICES_PREFIX) and topic.endswith(_MANIFEST_SUFFIX))
        or (topic.startswith((_DEVICES_PREFIX, _GROUPS_PREFIX)) and topic.endswith(_CMD_SUFFIX))
    )


class EventKind(StrEnum):
    """What happened on the link."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    PUBLISHED = "published"  # PUBACK received for ``mid``
    MESSAGE = "message"  # a decoded, valid message
    REJECTED = "rejected"  # a payload that failed to decode
    RAW = "raw"  # an undecoded deployment-plane payload (manifest, chunk or command)


@dataclass(frozen=True)
class LinkEvent:
    """One event from the network thread to the agent loop."""

    kind: EventKind
    mid: int | None = None
    topic: str | None = None
    message: Message | None = None
    reason: str | None = None
    failed: bool = False
    payload: bytes | None = None  # RAW events only


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, and whether to use TLS."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://host[:port]``, ``mqtts://host[:port]`` or ``host[:port]``.

    Raises:
        ConfigError: an unknown scheme, a missing host or a bad port (rule N1: ASCII digits,
            1 to 65535, no sign or leading zeros).
    """
    if "://" not in url:
        url = f"mqtt://{url}"
    try:
        parts = urlsplit(url)
        port = _broker_port(parts.netloc)
    except ValueError as exc:  # never echo the URL: it may carry user:password
        raise ConfigError(f"invalid broker URL: {exc}") from exc
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(
            f"broker URL scheme must be mqtt:// or mqtts://, got {parts.scheme[:16]!r}"
        )
    if not parts.hostname:
        raise ConfigError("broker URL has no host")
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883), tls)


def _broker_port(netloc: str) -> int | None:
    """The port of ``[user[:password]@]host[:port]``, read with the ASCII grammar (rule N1).

    Raises:
        ValueError: a port that is not a canonical ASCII decimal in ``1..65535``.
    """
    hostinfo = netloc.rpartition("@")[2]
    if hostinfo.startswith("["):  # [IPv6]:port
        _, _, rest = hostinfo.partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError("unexpected text after the IPv6 address")
        sep, text = rest[:1], rest[1:]
    else:
        _, sep, text = hostinfo.partition(":")
    if not sep:
        return None
    try:
        port = parse_ascii_uint(text, what="broker port", max_value=65_535)
    except ProtocolError as exc:
        raise ValueError(exc.message) from exc
    if port == 0:
        raise ValueError("broker port 0 is not a port")
    return port


class MqttLink:
    """An MQTT 5 connection whose callbacks only feed ``events``.

    Args:
        client_id: MQTT client id (the device id).
        broker: Broker address.
        events: Queue the callbacks write :class:`LinkEvent` to.
        will: ``(topic, payload)`` of the retained QoS 1 last will.
        username, password: Credentials, if the broker requires them.
        cafile, certfile, keyfile: TLS trust anchor and client certificate.
        reconnect_min_s, reconnect_max_s: Backoff bounds.
        keepalive_s: MQTT keepalive; the broker fires the will after 1.5x this of silence.
    """

    def __init__(
        self,
        *,
        client_id: str,
        broker: BrokerAddress,
        events: queue.Queue[LinkEvent],
        will: tuple[str, bytes],
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        keepalive_s: int = 30,
    ) -> None:
        self._broker = broker
        self._events = events
        self._keepalive = keepalive_s
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.enable_logger(_PahoLog(logging.getLogger("paho")))  # type: ignore[arg-type]
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls or cafile or certfile:
            try:
                client.tls_set(
                    ca_certs=cafile,
                    certfile=certfile,
                    keyfile=keyfile,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"cannot set up TLS: {exc}") from exc
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, round(reconnect_min_s)), max_delay=max(1, round(reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

    # --- callbacks: decode + enqueue only, never raise -------------------------------

    def _put(self, event: LinkEvent) -> None:
        try:
            self._events.put_nowait(event)
        except Exception:  # an unbounded queue does not fail; never let paho see an error
            logger.exception("dropping link event %s", event.kind)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        failed = bool(getattr(reason, "is_failure", False))
        self._put(
            LinkEvent(
                EventKind.DISCONNECTED if failed else EventKind.CONNECTED,
                reason=str(reason),
                failed=failed,
            )
        )

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._put(LinkEvent(EventKind.DISCONNECTED, reason=str(reason)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        failed = bool(getattr(reason, "is_failure", False))
        self._put(LinkEvent(EventKind.PUBLISHED, mid=mid, reason=str(reason), failed=failed))

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            topic = str(msg.topic)
            if is_raw_topic(topic):  # the updater verifies these itself (signed, encrypted)
                self._put(LinkEvent(EventKind.RAW, topic=topic, payload=bytes(msg.payload)))
                return
            message = decode_message(msg.payload)
        except ProtocolError as exc:
            self._put(
                LinkEvent(EventKind.REJECTED, topic=getattr(msg, "topic", None), reason=exc.message)
            )
        except Exception as exc:  # defensive: nothing may propagate into paho's thread
            self._put(LinkEvent(EventKind.REJECTED, reason=f"{type(exc).__name__}"))
        else:
            self._put(LinkEvent(EventKind.MESSAGE, topic=topic, message=message))

    # --- used by the agent loop ------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff until the broker answers)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self._broker.host,
            self._broker.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe (QoS 1) to ``topics``; call after every CONNECTED event."""
        if topics:
            self._client.subscribe([(t, 1) for t in topics])

    def subscribe_topic(self, topic: str) -> None:
        """Subscribe (QoS 1) to one topic filter."""
        self._client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription."""
        self._client.unsubscribe(topic)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Hand a message to paho; return its message id, or None if paho refused it.

        A QoS 1 message published while the connection is down (``MQTT_ERR_NO_CONN``) is
        still queued by paho and sent after the reconnect, so it counts as handed over:
        publishing it again would duplicate it.
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return int(info.mid)
        logger.warning("paho refused a publish to %s: %s", topic, info.rc)
        return None

    def is_connected(self) -> bool:
        """Whether the client currently has a connection."""
        return bool(self._client.is_connected())

    def stop(self) -> None:
        """Disconnect cleanly (the broker then does NOT send the will) and stop the thread."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
