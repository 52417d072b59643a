"""Sessions and rights are bound to the TLS certificate (``cloud.broker`` rules B1, B3, B5).

Review finding 3: (a) device A's credentials with device B's MQTT client id took B's
session over (B kicked in a loop, a command queued for B lost); (b) a device certificate
with the coordinator's username and password could publish a retained manifest. Against a
real Mosquitto 2.0.11 started from the generated configuration. Each refusal is paired with
its positive control, so nothing passes merely because nothing works.
"""

from __future__ import annotations

import time

from cloud.broker import write_credentials
from cloud.broker_process import reload_broker
from cloud.keys import COORDINATOR_USER, MONITOR_USER
from tests.security.conftest import FleetBroker, connect

NOT_AUTHORIZED = 135


def test_a_device_cannot_take_over_another_devices_session(fleet_broker: FleetBroker) -> None:
    victim = connect(fleet_broker, "dev-b", client_id="dev-b")
    coord = connect(fleet_broker, COORDINATOR_USER)
    # Everything that names dev-b: its client id, its username, even its bundle password.
    attacker = connect(
        fleet_broker, "dev-b", fleet_broker.password("dev-b"), cert_of="dev-a", client_id="dev-b"
    )
    try:
        assert victim.connack == "Success" and victim.subscribe("fedge/v1/devices/dev-b/#") == [1]
        assert attacker.connack == "Success"  # admitted, but as dev-a (its certificate)
        assert not victim.disconnected.wait(1.0), "dev-b was kicked by dev-a's connection"
        attacker.subscribe("fedge/v1/devices/dev-b/#")  # read ACL is enforced on delivery
        assert coord.publish("fedge/v1/devices/dev-b/cmd", b"for-b") < NOT_AUTHORIZED
        assert victim.wait(lambda: ("fedge/v1/devices/dev-b/cmd", b"for-b") in victim.messages)
        assert not attacker.wait(lambda: attacker.messages, timeout=0.5)
        # Only dev-a's rights: nothing of dev-b's, everything of dev-a's (positive control).
        assert attacker.publish("fedge/v1/devices/dev-b/status", b"spoof") == NOT_AUTHORIZED
        assert attacker.publish("fedge/v1/devices/dev-a/status", b"ok") < NOT_AUTHORIZED
        assert attacker.subscribe("fedge/v1/devices/dev-a/#") == [1]
        assert coord.publish("fedge/v1/devices/dev-a/cmd", b"for-a") < NOT_AUTHORIZED
        assert attacker.wait(lambda: ("fedge/v1/devices/dev-a/cmd", b"for-a") in attacker.messages)
        assert not victim.disconnected.is_set()
    finally:
        attacker.close()
        victim.close()
        coord.close()


def test_a_command_queued_for_an_offline_device_survives_an_impostor(
    fleet_broker: FleetBroker,
) -> None:
    victim = connect(fleet_broker, "dev-b", client_id="dev-b", session_expiry=300)
    assert victim.subscribe("fedge/v1/devices/dev-b/cmd") == [1]
    victim.close()  # offline; the broker keeps its session and queues for it
    coord = connect(fleet_broker, COORDINATOR_USER)
    try:
        assert coord.publish("fedge/v1/devices/dev-b/cmd", b"queued") < NOT_AUTHORIZED
        # A clean start with dev-b's client id would have wiped that session before.
        impostor = connect(fleet_broker, "dev-b", cert_of="dev-a", client_id="dev-b")
        assert impostor.connack == "Success"
        assert not impostor.wait(lambda: impostor.messages, timeout=0.5)
        impostor.close()
        back = connect(fleet_broker, "dev-b", client_id="dev-b", session_expiry=300)
        try:
            assert back.wait(lambda: ("fedge/v1/devices/dev-b/cmd", b"queued") in back.messages)
        finally:
            back.client.disconnect()  # end the persistent session for the next tests
            back.client.loop_stop()
            connect(fleet_broker, "dev-b").close()  # clean start: discard the session
    finally:
        coord.close()


def _retained_manifests(fleet_broker: FleetBroker, user: str) -> list[tuple[str, bytes]]:
    fresh = connect(fleet_broker, user)
    try:
        assert fresh.connack == "Success"
        assert fresh.subscribe("fedge/v1/devices/+/manifest") == [1]
        fresh.wait(lambda: False, timeout=0.7)  # retained messages arrive right after SUBACK
        with fresh.acked:
            return list(fresh.messages)
    finally:
        fresh.close()


def test_a_device_certificate_with_the_coordinators_password_stays_the_device(
    fleet_broker: FleetBroker,
) -> None:
    forged = connect(
        fleet_broker, COORDINATOR_USER, fleet_broker.password(COORDINATOR_USER), cert_of="dev-a"
    )
    try:
        assert forged.connack == "Success"  # the broker took the name from the certificate
        for device in ("dev-a", "dev-b"):
            topic = f"fedge/v1/devices/{device}/manifest"
            assert forged.publish(topic, b"forged", retain=True) == NOT_AUTHORIZED, topic
        assert forged.publish("fedge/v1/groups/kitchen/cmd", b"forged") == NOT_AUTHORIZED
        assert forged.publish("fedge/v1/devices/dev-a/status", b"ok") < NOT_AUTHORIZED  # control
    finally:
        forged.close()
    assert _retained_manifests(fleet_broker, COORDINATOR_USER) == []
    assert _retained_manifests(fleet_broker, MONITOR_USER) == []

    # Positive control: the coordinator's own certificate may publish a retained manifest,
    # and a fresh subscriber does see it (so the empty result above means something).
    coord = connect(fleet_broker, COORDINATOR_USER)
    try:
        topic = "fedge/v1/devices/dev-a/manifest"
        assert coord.publish(topic, b"genuine", retain=True) < NOT_AUTHORIZED
    finally:
        coord.close()
    assert _retained_manifests(fleet_broker, MONITOR_USER) == [(topic, b"genuine")]
    coord = connect(fleet_broker, COORDINATOR_USER)
    try:
        assert coord.publish(topic, b"", retain=True) < NOT_AUTHORIZED  # clear it again
    finally:
        coord.close()


def test_the_password_is_not_a_credential_any_more(fleet_broker: FleetBroker) -> None:
    """Rule B1: with the identity from the certificate, Mosquitto skips password checks."""
    for password in ("not-the-password", fleet_broker.password("dev-b"), ""):
        dev = connect(fleet_broker, "dev-a", password)
        try:
            assert dev.connack == "Success"
            assert dev.publish("fedge/v1/devices/dev-a/status", b"ok") < NOT_AUTHORIZED
            assert dev.publish("fedge/v1/devices/dev-b/status", b"x") == NOT_AUTHORIZED
        finally:
            dev.close()


def test_the_monitor_reads_everything_and_writes_nothing(fleet_broker: FleetBroker) -> None:
    monitor = connect(fleet_broker, MONITOR_USER)
    coord = connect(fleet_broker, COORDINATOR_USER)
    dev = connect(fleet_broker, "dev-a")
    try:
        assert monitor.connack == "Success" and monitor.subscribe("fedge/v1/#") == [1]
        assert dev.publish("fedge/v1/devices/dev-a/status", b"up") < NOT_AUTHORIZED
        assert coord.publish("fedge/v1/groups/kitchen/cmd", b"go") < NOT_AUTHORIZED
        assert monitor.wait(lambda: len(monitor.messages) >= 2)
        assert {t for t, _ in monitor.messages} >= {
            "fedge/v1/devices/dev-a/status",
            "fedge/v1/groups/kitchen/cmd",
        }
        for topic in (
            "fedge/v1/devices/dev-a/manifest",
            "fedge/v1/devices/dev-a/cmd",
            "fedge/v1/devices/dev-a/status",
            "fedge/v1/artifacts/" + "0" * 32 + "/chunks/0",
        ):
            assert monitor.publish(topic, b"x", retain=True) == NOT_AUTHORIZED, topic
    finally:
        dev.close()
        coord.close()
        monitor.close()


def test_one_session_per_identity(fleet_broker: FleetBroker) -> None:
    """The price of rule B3: a second connection of the same identity takes the first over,
    whatever client id either asked for (why observers use the monitor identity)."""
    first = connect(fleet_broker, COORDINATOR_USER, client_id="publisher-1")
    second = connect(fleet_broker, COORDINATOR_USER, client_id="publisher-2")
    try:
        assert first.connack == "Success" and second.connack == "Success"
        assert first.disconnected.wait(5)
        assert second.publish("fedge/v1/devices/dev-a/cmd", b"x") < NOT_AUTHORIZED
        assert not second.disconnected.is_set()
    finally:
        second.close()
        first.close()


def test_revoked_live_session_loses_every_right_at_the_reload(fleet_broker: FleetBroker) -> None:
    """Without eviction (its certificate not in the key home, say), SIGHUP alone: 2.0.11
    keeps the live TLS session, but the reloaded ACL grants it nothing, immediately, and the
    reloaded CRL refuses any new handshake. (With eviction: test_broker_acl.py.)"""
    home = fleet_broker.home
    home.enroll_device("dev-d", hardware_id="hw-a", groups=["kitchen"])
    write_credentials(home, fleet_broker.files)
    assert reload_broker(fleet_broker.files)
    time.sleep(0.3)  # the SIGHUP is handled asynchronously
    dev = connect(fleet_broker, "dev-d")
    coord = connect(fleet_broker, COORDINATOR_USER)
    try:
        assert dev.connack == "Success"
        assert dev.subscribe("fedge/v1/devices/dev-d/#") == [1]
        assert dev.subscribe("fedge/v1/groups/kitchen/#") == [1]
        assert coord.publish("fedge/v1/devices/dev-d/cmd", b"before") < NOT_AUTHORIZED
        assert dev.wait(lambda: dev.messages)  # positive control
        assert dev.publish("fedge/v1/devices/dev-d/status", b"ok") < NOT_AUTHORIZED
        home.revoke_device("dev-d")
        write_credentials(home, fleet_broker.files)
        assert reload_broker(fleet_broker.files)
        time.sleep(0.3)
        dev.messages.clear()
        for topic in ("fedge/v1/devices/dev-d/cmd", "fedge/v1/groups/kitchen/cmd"):
            assert coord.publish(topic, b"after") < NOT_AUTHORIZED
        assert not dev.wait(lambda: dev.messages, timeout=0.7)
        assert dev.publish("fedge/v1/devices/dev-d/status", b"x") == NOT_AUTHORIZED
        assert dev.publish("fedge/v1/devices/dev-d/telemetry", b"x") == NOT_AUTHORIZED
        again = connect(fleet_broker, "dev-d")
        assert again.connack == "tls-refused"
        again.close()
        other = connect(fleet_broker, "dev-a")  # everyone else keeps access
        assert other.connack == "Success"
        other.close()
    finally:
        dev.close()
        coord.close()
