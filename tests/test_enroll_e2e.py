"""A device enrolls itself over the control API with a one-time token (issue 10).

The real app served by uvicorn on loopback, the real ``edge.enroll`` client (stdlib HTTP),
the real key home: the bundle the device writes is byte for byte the one the coordinator
made, every file 0600; a second use of the token is refused and writes nothing; a hostile
answer (path traversal in a file name) is refused before anything is written.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from cloud.api.app import create_app
from cloud.config import Settings
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import Registry
from edge.enroll import enroll
from edge.keystore import load_device_keys
from shared.errors import ConfigError, ProtocolError
from tests.helpers.mosquitto import free_port


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[str, FleetStore, KeyHome]]:
    settings = Settings(home=tmp_path / "home")
    home = KeyHome(settings.home / "keys")
    home.init()
    registry = Registry.from_settings(settings)
    store = FleetStore.from_registry(registry)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store, home
    server.should_exit = True
    thread.join(10)
    registry.close()


def test_a_device_enrolls_with_its_token_and_gets_its_bundle(
    api: tuple[str, FleetStore, KeyHome], tmp_path: Path
) -> None:
    url, store, home = api
    secret, _ = store.create_enrollment_token(
        "cam-7",
        hardware_id="hw-a",
        profile="smart_camera",
        groups=["lobby"],
        ttl_s=60,
        now=time.time(),
    )
    bundle = tmp_path / "device" / "bundle"
    result = enroll(url, secret, bundle)
    assert result["device_id"] == "cam-7"
    made = home.device_dir("cam-7")
    for name in result["files"]:
        assert (bundle / name).read_bytes() == (made / name).read_bytes()
        assert (bundle / name).stat().st_mode & 0o777 == 0o600
    assert bundle.stat().st_mode & 0o777 == 0o700
    keys = load_device_keys(bundle)  # what the agent loads
    assert (keys.device_id, sorted(keys.groups)) == ("cam-7", ["lobby"])
    assert store.get_device("cam-7").hardware_id == "hw-a"

    again = tmp_path / "other"
    with pytest.raises(ConfigError, match="token_used"):
        enroll(url, secret, again)
    assert not again.exists()


def test_a_hostile_bundle_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    body = json.dumps({"device_id": "x", "files": {"../evil": "AAAA"}}).encode()

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = tmp_path / "bundle"
        with pytest.raises(ProtocolError, match="file name"):
            enroll(f"http://127.0.0.1:{server.server_port}", "t", target)
        assert not target.exists() and not (tmp_path / "evil").exists()
        assert [p.name for p in tmp_path.iterdir()] == []  # no staging directory left
    finally:
        server.shutdown()
