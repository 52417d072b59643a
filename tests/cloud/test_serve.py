"""``fedge cloud serve`` end to end, as a subprocess: a real broker from the generated
config, SQLite in FEDGE_HOME, ``/healthz`` and ``/readyz``, a device report ingested, and
a clean exit on SIGTERM (status 0, no process left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine

from cloud.broker import write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import DeviceState, StatusMessage
from tests.helpers.mosquitto import free_port
from tests.security.conftest import FleetBroker, connect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def fedge_home(tmp_path: Path) -> Iterator[tuple[Path, FleetBroker]]:
    """The layout `fedge` uses: keys and a generated, running broker in FEDGE_HOME."""
    fedge = tmp_path / "fedge-home"
    home = KeyHome(fedge / "keys")
    home.init()
    home.enroll_device("dev-a", hardware_id="hw-a")
    port = free_port()
    files = write_broker_config(home, fedge / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    yield fedge, FleetBroker(home, files, port, proc)
    proc.terminate()
    proc.wait(10)


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.HTTPError:
        return None


def _wait_status(proc: subprocess.Popen[bytes], url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _get(url) != 200:
        assert proc.poll() is None, f"fedge cloud serve exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.1)


def test_cloud_serve_becomes_ready_ingests_and_stops_cleanly_on_sigterm(
    fedge_home: tuple[Path, FleetBroker], tmp_path: Path
) -> None:
    fedge, broker = fedge_home
    database = f"sqlite:///{(fedge / 'registry.db').resolve()}"
    setup = create_engine(database)
    FleetStore(setup).add_device("dev-a", hardware_id="hw-a", profile=None, enrolled_at=1.0)
    setup.dispose()
    api_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FEDGE_HOME": str(fedge),
        "FEDGE_CONFIG": str(tmp_path / "no-such.toml"),
    }
    env.pop("FEDGE_DATABASE_URL", None)
    env.pop("FEDGE_BROKER", None)  # the broker comes from the generated config
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", "cloud", "serve", "--port", str(api_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        base = f"http://127.0.0.1:{api_port}"
        _wait_status(proc, f"{base}/healthz")
        _wait_status(proc, f"{base}/readyz")  # database and the fedge-ingest session
        checks = httpx.get(f"{base}/readyz", timeout=5).json()["checks"]
        assert {"database", "broker", "ingest"} <= set(checks)
        # A device reports while the service runs: the service's worker stores it.
        device = connect(broker, "dev-a", client_id="dev-a")
        status = StatusMessage(device_id="dev-a", sent_at=time.time(), state=DeviceState.ONLINE)
        assert device.publish(topics.device_status("dev-a"), encode_message(status)) < 128
        device.close()
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not [c.pid for c in children if c.is_running() and c.status() != "zombie"]
    text = log.read_text()
    assert "coordinator starting" in text and "coordinator stopped" in text, text
    assert "ingest worker stopped" in text and "database closed" in text, text
    # The status was written (by a batch committed while running or by the stop's flush).
    engine = create_engine(database)
    try:
        history = FleetStore(engine).status_history("dev-a")
    finally:
        engine.dispose()
    assert [s.msg_id for s in history] == [status.msg_id]


def test_cloud_serve_refuses_to_start_without_a_key_home(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FEDGE_HOME": str(tmp_path / "empty"),
        "FEDGE_CONFIG": str(tmp_path / "no-such.toml"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "cloud", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert b"error (config_error)" in result.stderr and b"fedge keys init" in result.stderr


def test_cloud_serve_refuses_a_malformed_broker_address(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDGE_HOME": str(tmp_path / "empty")}
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "cloud", "serve", "--broker", "no-port"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert b"error (config_error): --broker must be host:port" in result.stderr


def test_serve_takes_the_deployment_staleness_from_the_option_or_env_and_bounds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--deployment-stale`` / ``FEDGE_DEPLOYMENT_STALE_S`` reach the service; a bound
    under two heartbeats (it would fail live jobs) is a usage error."""
    from typer.testing import CliRunner

    import cloud.service
    from simulations.cli import app

    seen: dict[str, object] = {}

    def fake_serve(_settings: object, _host: str, _port: int, **kw: object) -> int:
        seen.update(kw)
        return 0

    monkeypatch.setattr(cloud.service, "serve", fake_serve)
    monkeypatch.setenv("FEDGE_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["cloud", "serve", "--deployment-stale", "40"]).exit_code == 0
    assert seen["deployment_stale_s"] == 40.0
    monkeypatch.setenv("FEDGE_DEPLOYMENT_STALE_S", "25")
    assert runner.invoke(app, ["cloud", "serve"]).exit_code == 0
    assert seen["deployment_stale_s"] == 25.0
    refused = runner.invoke(app, ["cloud", "serve", "--deployment-stale", "5"])
    assert refused.exit_code == 2 and "--deployment-stale" in refused.output
