"""Enroll and revoke through the control API against the real broker (issue 10).

A device enrolled with a one-time token over the API can connect with its certificate;
``POST /v1/devices/{id}/revoke`` (admin) ends its live session and its next connection is
refused by the broker at the TLS handshake (the CRL), while another device is unaffected.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from cloud.api import create_app
from cloud.broker import BrokerFiles, write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.config import Settings
from cloud.fleet.records import Role
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import Registry
from tests.helpers.mosquitto import free_port
from tests.security.conftest import FleetBroker, connect


def test_revoking_through_the_api_ends_broker_access_at_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'f.db'}")
    home = KeyHome(settings.home / "keys")
    home.init()
    port = free_port()
    files: BrokerFiles = write_broker_config(home, settings.home / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    registry = Registry(str(settings.database_url), tmp_path / "artifacts")
    store = FleetStore.from_registry(registry)
    tokens = {r: store.create_api_token(r, name=str(r), now=time.time())[0] for r in Role}
    fleet = FleetBroker(home, files, port, proc)
    try:
        with TestClient(create_app(settings)) as client:

            def auth(role: Role) -> dict[str, str]:
                return {"Authorization": f"Bearer {tokens[role]}"}

            for device_id in ("dev-a", "dev-b"):
                made = client.post(
                    "/v1/devices/enrollment-tokens",
                    json={"device_id": device_id, "hardware_id": "hw-a"},
                    headers=auth(Role.OPERATOR),
                )
                assert made.status_code == 201, made.text
                enrolled = client.post("/v1/devices/enroll", json={"token": made.json()["token"]})
                assert enrolled.status_code == 201, enrolled.text
                assert enrolled.json()["broker"]["broker_reloaded"] is True
            dev_a, dev_b = connect(fleet, "dev-a"), connect(fleet, "dev-b")
            assert (dev_a.connack, dev_b.connack) == ("Success", "Success")
            assert dev_a.subscribe("fedge/v1/devices/dev-a/#") == [1]  # the ACL knows it

            refused = client.post("/v1/devices/dev-a/revoke", headers=auth(Role.OPERATOR))
            assert refused.status_code == 403  # operators may not revoke: admins do
            assert refused.headers["content-type"].startswith("application/problem+json")
            revoked = client.post("/v1/devices/dev-a/revoke", headers=auth(Role.ADMIN))
            assert revoked.status_code == 200, revoked.text
            assert dev_a.disconnected.wait(5), "the revoked device kept its session"
            again = connect(fleet, "dev-a")
            assert again.connack == "tls-refused"  # its certificate is on the CRL
            again.close()
            assert dev_b.publish("fedge/v1/devices/dev-b/status", b"{}") < 128  # unaffected
            assert store.get_device("dev-a").revoked_at is not None
        dev_a.close()
        dev_b.close()
    finally:
        registry.close()
        proc.terminate()
        proc.wait(10)
