"""A real Mosquitto started from the configuration ``fedge broker config`` generates.

Uses the product code (``cloud.keys``, ``cloud.broker``) end to end: key home, device
enrollment, TLS certificate identities, ACL and CRL files, SIGHUP reload. Module-scoped:
one broker serves every test of a module (keeps the suite fast on shared CPUs).

The broker takes each client's identity from its certificate (rules B1/B3), so
:func:`connect`'s ``cert_of`` is who the client IS; ``user``/``password`` are only what it
sends. Each identity has one session at a time: observe with ``MONITOR_USER`` while a
publisher holds the coordinator's session.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.broker import BrokerFiles, write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.keys import COORDINATOR_USER, MONITOR_USER, KeyHome
from shared.errors import ConfigError
from tests.helpers.mosquitto import free_port


@dataclass
class FleetBroker:
    """The running broker and the key home it was generated from."""

    home: KeyHome
    files: BrokerFiles
    port: int
    proc: subprocess.Popen[bytes]

    def bundle(self, user: str) -> Path:
        if user == COORDINATOR_USER:
            return self.home.path / "coordinator"
        if user == MONITOR_USER:
            return self.home.monitor_dir
        return self.home.device_dir(user)

    def tls_files(self, user: str) -> tuple[Path, Path]:
        """Client certificate and key of ``user``."""
        prefix = "broker" if user in (COORDINATOR_USER, MONITOR_USER) else "client"
        bundle = self.bundle(user)
        return bundle / f"{prefix}.crt", bundle / f"{prefix}.key"

    def password(self, user: str) -> str:
        """The bundle password of ``user`` (sent, but not checked by the broker: rule B1)."""
        path = self.bundle(user) / "broker.password"
        return path.read_text().strip() if path.exists() else ""


@dataclass
class Client:
    """A connected paho client that records what it receives and its ack codes."""

    client: mqtt.Client
    connack: str | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    suback: dict[int, list[int]] = field(default_factory=dict)
    puback: dict[int, int] = field(default_factory=dict)
    disconnected: threading.Event = field(default_factory=threading.Event)
    acked: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
        with self.acked:
            return bool(self.acked.wait_for(predicate, timeout))

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None and self.wait(lambda: mid in self.suback)
        return self.suback[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.puback)
        return self.puback[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    broker: FleetBroker,
    user: str | None,
    password: str | None = None,
    *,
    cert_of: str | None = None,
    client_id: str | None = None,
    tls_files: tuple[Path, Path] | None = None,
    session_expiry: int = 0,
) -> Client:
    """Connect sending ``user``/``password`` (or no username); ``cert_of`` picks the TLS
    client certificate (default: ``user``'s, else dev-a's). ``cert_of=""``: no certificate;
    ``tls_files``: this (certificate, key) pair instead. ``session_expiry`` > 0 resumes
    (or starts) a persistent session instead of a clean one.

    The client never reconnects by itself: a client whose session was taken over stays
    disconnected (``disconnected`` is set), so a test sees it, and it cannot fight back.
    """
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"t-{user}-{time.time_ns()}",
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    rec = Client(c)
    if cert_of == "":
        c.tls_set(ca_certs=str(broker.home.tls_dir / "ca.crt"))
    else:
        certfile, keyfile = tls_files or broker.tls_files(cert_of or user or "dev-a")
        c.tls_set(
            ca_certs=str(broker.home.tls_dir / "ca.crt"),
            certfile=str(certfile),
            keyfile=str(keyfile),
        )
    if user is not None:
        c.username_pw_set(user, password if password is not None else broker.password(user))

    def on_connect(cl, ud, flags, reason, props):  # type: ignore[no-untyped-def]
        with rec.acked:
            rec.connack = str(reason)
            rec.acked.notify_all()

    def on_subscribe(cl, ud, mid, codes, props):  # type: ignore[no-untyped-def]
        with rec.acked:
            rec.suback[mid] = [int(code.value) for code in codes]
            rec.acked.notify_all()

    def on_publish(cl, ud, mid, reason, props):  # type: ignore[no-untyped-def]
        with rec.acked:
            rec.puback[mid] = int(reason.value)
            rec.acked.notify_all()

    def on_message(cl, ud, msg):  # type: ignore[no-untyped-def]
        with rec.acked:
            rec.messages.append((msg.topic, msg.payload))
            rec.acked.notify_all()

    def on_disconnect(cl, ud, flags, reason, props):  # type: ignore[no-untyped-def]
        rec.disconnected.set()
        with rec.acked:
            rec.acked.notify_all()

    c.on_connect, c.on_subscribe, c.on_publish = on_connect, on_subscribe, on_publish
    c.on_message, c.on_disconnect = on_message, on_disconnect
    try:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
        c.connect("127.0.0.1", broker.port, clean_start=session_expiry == 0, properties=props)
    except OSError:
        rec.connack = "tls-refused"
        return rec
    c.loop_start()
    rec.wait(lambda: rec.connack is not None or rec.disconnected.is_set())
    if rec.connack is None:
        rec.connack = "tls-refused"
    return rec


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    base = tmp_path_factory.mktemp("fleet")
    home = KeyHome(base / "keys")
    home.init()
    home.enroll_device("dev-a", hardware_id="hw-a", groups=["kitchen"])
    home.enroll_device("dev-b", hardware_id="hw-a", groups=["garage"])
    home.enroll_device("dev-c", hardware_id="hw-a")
    port = free_port()
    files = write_broker_config(home, base / "broker", port=port)
    proc = start_broker(files)
    try:
        wait_listening(port, proc=proc)
    except ConfigError:
        proc.kill()
        raise
    yield FleetBroker(home, files, port, proc)
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
