"""The coordinator's MQTT 5 connection: TLS client certificate + password, QoS 1.

Callbacks only enqueue; the :class:`~cloud.publisher.Publisher` loop consumes the queue.
Counts the bytes it publishes so callers can report bytes on the wire.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.keys import COORDINATOR_USER, KeyHome
from shared.errors import ConfigError

__all__ = ["CoordinatorLink", "Incoming"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 300  # how long the broker keeps queuing for a coordinator that dropped


@dataclass(frozen=True)
class Incoming:
    """A received message (``retained``: delivered from the broker's retained store)."""

    topic: str
    payload: bytes
    retained: bool


class CoordinatorLink:
    """A connected coordinator client.

    Args:
        home: Key home holding ``coordinator/broker.{crt,key,password}`` and the CA.
        host, port: The broker's TLS listener.
        client_id: MQTT client id (unique per process).
    """

    def __init__(self, home: KeyHome, *, host: str, port: int, client_id: str) -> None:
        cdir = home.path / "coordinator"
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.bytes_sent = 0
        self._connected = threading.Event()
        self._refused: str | None = None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        try:
            client.tls_set(
                ca_certs=str(home.tls_dir / "ca.crt"),
                certfile=str(cdir / "broker.crt"),
                keyfile=str(cdir / "broker.key"),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            password = (cdir / "broker.password").read_text().strip()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"coordinator broker credentials unusable: {exc}") from exc
        client.username_pw_set(COORDINATOR_USER, password)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        self._host, self._port = host, port
        self._subscriptions: list[str] = []

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._refused = str(reason)
        elif self._subscriptions:
            client.subscribe([(t, 1) for t in self._subscriptions])
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.inbox.put(Incoming(str(msg.topic), bytes(msg.payload), bool(msg.retain)))

    def connect(self, subscriptions: list[str], timeout: float = 10.0) -> None:
        """Connect, subscribe to ``subscriptions`` (again after every reconnect).

        Raises:
            ConfigError: the broker refused or did not answer.
        """
        self._subscriptions = list(subscriptions)
        # A session that outlives a dropped connection: statuses and resend requests the
        # devices send while the coordinator is reconnecting (e.g. across a broker restart)
        # are queued for it instead of lost. Fresh on the first connect, resumed after.
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self._client.connect(self._host, self._port, keepalive=30, properties=props)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot reach broker {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout) or self._refused:
            self.close()
            raise ConfigError(f"broker refused the coordinator: {self._refused or 'timeout'}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish at QoS 1 (paho retries after a reconnect)."""
        self.bytes_sent += len(payload)
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        """Disconnect and end the session (nothing more to queue for this client)."""
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()
