"""The coordinator's MQTT 5 connection: TLS client certificate + password, QoS 1.

Callbacks only enqueue; the publish session's loop consumes the queue. Counts the bytes
it publishes so callers can report bytes on the wire. :class:`CoordinatorTransport` is the
seam the deployment logic depends on (httpx-style): this MQTT link in production, an
in-memory broker in unit tests (``tests/fakes``).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.identity_lock import IdentityLock
from cloud.keys import COORDINATOR_USER, KeyHome
from shared.errors import ConfigError, ProtocolError
from shared.numbers import parse_ascii_uint

__all__ = ["CoordinatorLink", "CoordinatorTransport", "Incoming", "parse_broker"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 300  # how long the broker keeps queuing for a coordinator that dropped


@dataclass(frozen=True)
class Incoming:
    """A received message (``retained``: delivered from the broker's retained store)."""

    topic: str
    payload: bytes
    retained: bool


def parse_broker(value: str) -> tuple[str, int]:
    """``host:port`` or ``mqtts://host:port`` (``FEDGE_BROKER`` means the same on both sides).

    Raises:
        ConfigError: anything else (the port by the one ASCII number grammar).
    """
    text = value.removeprefix("mqtts://").removeprefix("mqtt://")
    host, _, port = text.rpartition(":")
    try:
        number = parse_ascii_uint(port, what="port", max_value=65535)
    except ProtocolError as exc:
        raise ConfigError(f"--broker must be host:port, got {value[:80]!r}") from exc
    if not host or "/" in host or number == 0:
        raise ConfigError(f"--broker must be host:port, got {value[:80]!r}")
    return host, number


class CoordinatorTransport(Protocol):
    """What the coordinator's deployment logic needs from the broker connection."""

    inbox: queue.Queue[Incoming]
    bytes_sent: int

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> object:
        """Publish at QoS 1."""


_TAKEOVER_FLAPS = 3  # disconnects, each soon after a connect, that mean "taken over"
_TAKEOVER_WINDOW_S = 2.0


class CoordinatorLink:
    """A connected coordinator client.

    The broker binds a session to the certificate's identity (``cloud/broker.py`` B1): the
    client id is forced to ``fedge-coordinator``, so a second coordinator connection would
    take the first one's session over. A link therefore holds an exclusive lock on
    ``coordinator/broker.lock`` in the key home while it is connected, and a second one in
    any process on this host is refused with a clear error. A takeover from elsewhere is
    recognised (MQTT 5 reason 142, or — Mosquitto 2.0 sends none — repeated drops right
    after connecting) and turns every later publish into a :class:`ConfigError`.

    Args:
        home: Key home holding ``coordinator/broker.{crt,key}`` and the CA.
        host, port: The broker's TLS listener.
        client_id: MQTT client id (the broker replaces it with the certificate's name).
    """

    def __init__(
        self, home: KeyHome, *, host: str, port: int, client_id: str = COORDINATOR_USER
    ) -> None:
        cdir = home.path / "coordinator"
        self._lock = IdentityLock(
            cdir / "broker.lock",
            busy="another coordinator connection is active for this key home (the broker "
            "allows one session per identity): wait for it to finish",
        )
        self.failure: str | None = None  # why the link is unusable (taken over)
        self._connected_at = 0.0
        self._flaps = 0
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.bytes_sent = 0
        self._connected = threading.Event()
        self._refused: str | None = None
        self.connects = 0  # CONNACKs received (1 + reconnects)
        self.sessions_resumed = 0  # reconnects on which the broker still had our session
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
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._host, self._port = host, port
        self._subscriptions: list[str] = []

    def _on_connect(self, client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._refused = str(reason)
            self._connected.set()
            return
        self.connects += 1
        self._connected_at = time.monotonic()
        if getattr(flags, "session_present", False):
            self.sessions_resumed += 1
        elif self.connects > 1:
            # The broker lost our session (no persistence, or it expired): what devices
            # sent meanwhile is gone from the queue, but their retained statuses come again
            # with the resubscription below, and those alone decide a commit (§9 O1).
            logger.warning("broker had no session for the coordinator; resubscribing")
        if self._subscriptions:
            # Also on a resumed session: harmless, and it re-delivers retained statuses.
            client.subscribe([(t, 1) for t in self._subscriptions])
        self._connected.set()

    def _on_disconnect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        value = getattr(reason, "value", None)
        quick = time.monotonic() - self._connected_at < _TAKEOVER_WINDOW_S
        self._flaps = self._flaps + 1 if quick else 0
        if value == 142 or self._flaps >= _TAKEOVER_FLAPS:
            self.failure = (
                "another connection with the coordinator's certificate took this session "
                "over; run one coordinator process per key home"
            )
            logger.error("%s", self.failure)
            client.disconnect()  # stop paho's reconnect loop: both would keep kicking

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.inbox.put(Incoming(str(msg.topic), bytes(msg.payload), bool(msg.retain)))

    def connect(self, subscriptions: list[str], timeout: float = 10.0) -> None:
        """Connect, subscribe to ``subscriptions`` (again after every reconnect).

        Raises:
            ConfigError: the broker refused or did not answer.
        """
        self._acquire()
        self._subscriptions = list(subscriptions)
        # A session that outlives a dropped connection: statuses and resend requests the
        # devices send while the coordinator is reconnecting (e.g. across a broker restart)
        # are queued for it instead of lost. clean_start=False from the *first* connect:
        # Mosquitto 2.0 does not write a session begun with clean start to its persistence
        # file, so such a session is gone after a broker restart (session_present=0, checked
        # on 2.0.11). close() ends the session; a session left by a crashed process is
        # resumed (stale messages in it decide nothing: outcomes are matched to this
        # publish's artifact ids, commits to what a device serves, §13).
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self._client.connect(
                self._host, self._port, keepalive=30, clean_start=False, properties=props
            )
        except (OSError, ssl.SSLError) as exc:
            self._release()
            raise ConfigError(f"cannot reach broker {self._host}:{self._port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout) or self._refused:
            self.close()
            raise ConfigError(f"broker refused the coordinator: {self._refused or 'timeout'}")

    def _acquire(self) -> None:
        self._lock.acquire()

    def _release(self) -> None:
        self._lock.release()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish at QoS 1 (paho retries after a reconnect).

        Raises:
            ConfigError: the session was taken over by another coordinator connection.
        """
        if self.failure is not None:
            raise ConfigError(self.failure)
        self.bytes_sent += len(payload)
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        """Disconnect and end the session (nothing more to queue for this client)."""
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        try:
            self._client.disconnect(properties=props)
            self._client.loop_stop()
        finally:
            self._release()
