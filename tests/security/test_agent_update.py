"""The edge agent (a real ``python -m edge run --bundle`` subprocess) takes signed updates.

Real Mosquitto with TLS, passwords and ACLs (``cloud.broker``), the product's
:class:`~cloud.publisher.Publisher` as the coordinator, and the agent's own MQTT link,
outbox and LiteRT predictor. The agent is SIGKILLed at random points of a download and
restarted: it must always come back serving a committed model (never a partial one) and
finally commit the new version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.broker import start_broker, write_broker_config
from cloud.keys import COORDINATOR_USER, KeyHome
from cloud.publisher import Outcome, Publisher, PublishReport, select_devices
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from shared.protocol import topics
from shared.protocol.codec import decode_message
from shared.protocol.messages import StatusMessage, UpdateOutcome
from tests.helpers.models import BuiltModels, build_models
from tests.helpers.mosquitto import free_port
from tests.security.conftest import Client, FleetBroker, connect
from tests.security.test_delivery_e2e import _wait_port

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "dev-a"
VERSIONS = 6  # v1 plain, then one SIGKILL round per version 2..6
CHUNK_SIZE = 2048  # many chunks, so kills land mid-download

PROFILE = """
name = "agent-update-test"
device_class = "sensor"
hardware_id = "hw-a"
inference_threads = 1
ram_mb = 256
storage_mb = 64
max_model_bytes = 4_000_000
precisions = ["int8"]
telemetry_interval_s = 5.0
groups = []
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> BuiltModels:
    cached = os.environ.get("FEDGE_TEST_MODELS_DIR")
    return build_models(Path(cached) if cached else tmp_path_factory.mktemp("tflite"))


@dataclass
class World:
    broker: FleetBroker
    registry: Registry
    base: Path
    models: dict[int, Path]
    http_port: int
    agent: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> None:
        bundle = self.broker.home.device_dir(DEVICE)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "run",
                "--profile",
                str(self.base / "profile.toml"),
                "--device-id",
                DEVICE,
                "--broker",
                f"mqtts://127.0.0.1:{self.broker.port}",
                "--bundle",
                str(bundle),
                "--state-dir",
                str(self.base / "agent"),
                "--http-port",
                str(self.http_port),
                "--reconnect-max",
                "1",
                "--update-quiet",
                "0.5",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_agent(self) -> None:
        if self.agent is not None:
            if self.agent.poll() is None:
                self.agent.send_signal(signal.SIGKILL)
            self.agent.wait(10)
            self.agent = None

    def publish(self, version: int) -> PublishReport:
        targets = select_devices(self.broker.home, [DEVICE], None)
        pub = Publisher(
            self.registry,
            self.broker.home,
            host="127.0.0.1",
            port=self.broker.port,
            chunk_size=CHUNK_SIZE,
        )
        return pub.publish(f"cnn@{version}", targets, timeout_s=30, discover_s=0.3)

    def health(self, timeout: float = 20) -> dict[str, object]:
        """The agent's /v1/health once it serves a model."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/v1/health"
        while True:
            assert self.agent is not None and self.agent.poll() is None, "agent died"
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return dict(json.loads(resp.read()))
            except (urllib.error.URLError, OSError, ValueError):
                assert time.monotonic() < deadline, "agent never served a model"
                time.sleep(0.1)


@pytest.fixture()
def world(tmp_path: Path, models: BuiltModels) -> Iterator[World]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    home.enroll_device(DEVICE, hardware_id="hw-a")
    port = free_port()
    files = write_broker_config(home, tmp_path / "broker", port=port)
    proc = start_broker(files)
    _wait_port(port)
    (tmp_path / "profile.toml").write_text(PROFILE)
    registry = Registry(f"sqlite:///{tmp_path / 'reg.db'}", tmp_path / "store")
    by_version: dict[int, Path] = {}
    for n in range(1, VERSIONS + 1):
        path = models.int8_a if n % 2 else models.int8_b
        art = NewArtifact("tflite", "int8", path.read_bytes(), ArtifactStatus.APPROVED, "test")
        registry.create_version("cnn", spec={}, source=VersionSource.TRAINED, artifacts=[art])
        by_version[n] = path
    w = World(FleetBroker(home, files, port, proc), registry, tmp_path, by_version, free_port())
    yield w
    w.kill_agent()
    registry.close()
    proc.terminate()
    proc.wait(10)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _statuses(watcher: Client) -> list[StatusMessage]:
    with watcher.acked:
        payloads = [p for t, p in watcher.messages if t == topics.device_status(DEVICE)]
    decoded = [decode_message(p) for p in payloads]
    return [m for m in decoded if isinstance(m, StatusMessage)]


def _wait_status(watcher: Client, version: int, outcome: UpdateOutcome, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(
        s.update is not None and s.update.version == version and s.update.outcome is outcome
        for s in _statuses(watcher)
    ):
        assert time.monotonic() < deadline, f"no {outcome} status for v{version}"
        time.sleep(0.01)


def _assert_serving(world: World, allowed: set[int]) -> int:
    """The agent serves a committed version in ``allowed``, byte for byte."""
    health = world.health()
    assert health["status"] == "ok"
    version = int(str(health["model_version"]))
    assert version in allowed
    model = health["model"]
    assert isinstance(model, dict)
    assert model["sha256"] == _sha(world.models[version])  # never a partial artifact
    return version


def test_agent_commits_updates_and_survives_sigkill_mid_download(world: World) -> None:
    watcher = connect(world.broker, COORDINATOR_USER)
    try:
        assert watcher.subscribe(topics.device_status(DEVICE)) == [1]
        world.start_agent()
        report = world.publish(1)
        assert report.devices[DEVICE].outcome is Outcome.COMMITTED, report.devices[DEVICE]
        _wait_status(watcher, 1, UpdateOutcome.COMMITTED, timeout=5)
        committed = [
            s
            for s in _statuses(watcher)
            if s.update is not None and s.update.outcome is UpdateOutcome.COMMITTED
        ]
        assert committed[-1].model_version == "1" and committed[-1].slot in ("a", "b")
        assert _assert_serving(world, {1}) == 1

        interrupted = partials = 0
        rng = random.Random(int(os.environ.get("FEDGE_TEST_SEED", "1234")))
        for version in range(2, VERSIONS + 1):
            result: list[PublishReport] = []
            worker = threading.Thread(
                target=lambda v=version, out=result: out.append(world.publish(v))
            )
            worker.start()
            _wait_status(watcher, version, UpdateOutcome.DOWNLOADING, timeout=15)
            time.sleep(rng.uniform(0.0, 0.1))
            world.kill_agent()  # SIGKILL: no clean stop, the will says offline
            downloads = world.base / "agent" / "updater" / "downloads"
            partial = downloads.is_dir() and any(downloads.iterdir())
            world.start_agent()
            served = _assert_serving(world, {version - 1, version})  # old or new, never partial
            interrupted += served == version - 1
            partials += partial
            worker.join(40)
            assert result, "publisher did not finish"
            outcome = result[0].devices[DEVICE]
            assert outcome.outcome is Outcome.COMMITTED, outcome
            deadline = time.monotonic() + 10
            while _assert_serving(world, {version - 1, version}) != version:
                assert time.monotonic() < deadline, f"v{version} committed but not served"
                time.sleep(0.1)
        print(f"kills before commit: {interrupted}, with a partial download: {partials}")
        assert interrupted >= 1, "no SIGKILL landed before a commit"
    finally:
        watcher.close()
