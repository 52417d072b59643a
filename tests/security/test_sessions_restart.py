"""Sessions survive a broker restart (issue 9, class 11), on real Mosquitto with TLS + ACLs.

Mosquitto 2.0 persists only sessions begun *without* clean start; a coordinator that
connected with clean start lost its session at a restart, and what devices reported while
it reconnected was lost. Here the coordinator's link and a device each miss a message sent
while they are cut off by a restart, and must get it when they reconnect.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.broker import write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.deployment.link import CoordinatorLink
from cloud.keys import COORDINATOR_USER, KeyHome
from edge.keystore import load_device_keys
from edge.messaging import MqttLink, parse_broker_url
from shared.protocol import topics
from tests.helpers.mosquitto import free_port
from tests.security.conftest import Client, FleetBroker, connect


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[FleetBroker]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    home.enroll_device("dev-a", hardware_id="hw-a")
    port = free_port()
    files = write_broker_config(home, tmp_path / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    fleet = FleetBroker(home, files, port, proc)
    yield fleet
    fleet.proc.terminate()
    fleet.proc.wait(10)


def _restart(broker: FleetBroker) -> None:
    broker.proc.terminate()  # SIGTERM: mosquitto writes its persistence file
    broker.proc.wait(10)
    broker.proc = start_broker(broker.files)
    wait_listening(broker.port, proc=broker.proc)


def _until(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _device(broker: FleetBroker) -> Client:
    return connect(broker, "dev-a", client_id="dev-a")


def test_coordinator_gets_what_a_device_sent_while_it_was_reconnecting(
    broker: FleetBroker,
) -> None:
    link = CoordinatorLink(broker.home, host="127.0.0.1", port=broker.port)
    link.connect([topics.all_devices(topics.DeviceLeaf.TELEMETRY)])
    try:
        # Keep the coordinator away while the broker restarts and a device reports: its
        # network loop is paused, as a slow reconnect would leave it.
        link._client.loop_stop()
        _restart(broker)
        device = _device(broker)
        assert device.connack == "Success"
        telemetry = topics.device_telemetry("dev-a")
        assert device.publish(telemetry, b"while-you-were-away") < 128
        device.close()
        link._client.loop_start()  # reconnects with the same client id
        assert _until(lambda: link.connects >= 2), "the coordinator did not reconnect"
        assert link.sessions_resumed == 1  # the broker kept its session across the restart
        got = []
        assert _until(lambda: _drain(link, got) and b"while-you-were-away" in got)
    finally:
        link.close()


def _drain(link: CoordinatorLink, into: list[bytes]) -> bool:
    while not link.inbox.empty():
        into.append(link.inbox.get_nowait().payload)
    return True


def test_device_gets_a_command_sent_while_it_was_cut_off_by_a_restart(
    broker: FleetBroker,
) -> None:
    """The device side of the same rule: the agent's session (clean_start=False, expiry)."""
    got: list[bytes] = []
    keys = load_device_keys(broker.home.device_dir("dev-a"))
    link = MqttLink(
        client_id="dev-a",
        broker=parse_broker_url(f"mqtts://127.0.0.1:{broker.port}"),
        events=queue.Queue(),
        will=(topics.device_status("dev-a"), b"offline"),
        username=keys.broker_username,
        password=keys.broker_password,
        cafile=str(keys.ca_file),
        certfile=str(keys.client_cert),
        keyfile=str(keys.client_key),
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )
    events = link._events
    link.start()
    try:
        assert _until(lambda: link.is_connected())
        link.subscribe([topics.device_cmd("dev-a")])
        time.sleep(0.5)  # SUBACK
        link._client.loop_stop()  # cut off: the broker restarts without it
        _restart(broker)
        coord = connect(broker, COORDINATOR_USER)
        assert coord.publish(topics.device_cmd("dev-a"), b"queued-command") < 128
        coord.close()
        link._client.loop_start()

        def received() -> bool:
            while not events.empty():
                event = events.get_nowait()
                if event.payload is not None:
                    got.append(event.payload)
            return b"queued-command" in got

        assert _until(received), "the command sent during the restart was lost"
    finally:
        link.stop()
