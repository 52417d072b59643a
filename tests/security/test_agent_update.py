"""The edge agent (a real ``python -m edge run --bundle`` subprocess) takes signed updates.

Real Mosquitto with TLS, passwords and ACLs (``cloud.broker``), the product's
:class:`~cloud.deployment.publisher.Publisher` as the coordinator, and the agent's own MQTT link,
outbox and LiteRT predictor. The agent is SIGKILLed at >= 20 random points of download,
install, probation and commit, and restarted: it must always come back serving a committed
model (never a partial one) and finally commit the new version. A signed ``rollback``
command sent with :func:`cloud.deployment.commands.send_command` reaches the agent end to end.
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

from cloud.broker import write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.deployment.commands import send_command
from cloud.deployment.publisher import Outcome, Publisher, PublishReport, select_devices
from cloud.keys import MONITOR_USER, KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from shared.protocol import topics
from shared.protocol.codec import decode_message
from shared.protocol.commands import CommandAction
from shared.protocol.messages import DeviceState, StatusMessage, UpdateOutcome
from tests.helpers.models import BuiltModels
from tests.helpers.mosquitto import free_port
from tests.security.conftest import Client, FleetBroker, connect

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "dev-a"
VERSIONS = 21  # v1 plain, then one SIGKILL at a random point of each of versions 2..21
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
    wait_listening(port, proc=proc)
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


def _committed_on_disk(world: World) -> dict[str, object]:
    """``state.json`` right after a SIGKILL: its active slot is intact (rules S2, I1)."""
    updater = world.base / "agent" / "updater"
    state = json.loads((updater / "state.json").read_text())
    active = state["active"]
    record = state["slots"][active]
    data = (updater / "slots" / f"{active}.tflite").read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"], "committed slot damaged"
    return dict(state)


def _assert_only_committed_slots(world: World) -> None:
    """After a commit: every slot file is a committed artifact, no temporaries (rule I2)."""
    updater = world.base / "agent" / "updater"
    state = json.loads((updater / "state.json").read_text())
    files = sorted(p.name for p in (updater / "slots").iterdir())
    assert files == sorted(f"{slot}.tflite" for slot in state["slots"]), files
    for slot, record in state["slots"].items():
        data = (updater / "slots" / f"{slot}.tflite").read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert record["sha256"] == _sha(world.models[record["version"]])


def _phase(world: World, version: int, state: dict[str, object]) -> str:
    """Where a SIGKILL landed, judged from the disk it left behind."""
    updater = world.base / "agent" / "updater"
    slots = state["slots"]
    assert isinstance(slots, dict)
    if any(r["version"] == version for r in slots.values()):
        return "after-commit"
    if any(p.name.startswith(".") or p.stem not in slots for p in (updater / "slots").iterdir()):
        return "install"  # a candidate slot file written but not committed
    downloads = updater / "downloads"
    return "download" if downloads.is_dir() and any(downloads.iterdir()) else "other"


def _publish_in_background(
    world: World, version: int
) -> tuple[threading.Thread, list[PublishReport]]:
    result: list[PublishReport] = []
    worker = threading.Thread(target=lambda: result.append(world.publish(version)))
    worker.start()
    return worker, result


def test_agent_commits_updates_and_survives_sigkill_during_download_and_install(
    world: World,
) -> None:
    """>= 20 SIGKILLs at random points of download, install, probation and commit."""
    watcher = connect(world.broker, MONITOR_USER)
    try:
        assert watcher.subscribe(topics.device_status(DEVICE)) == [1]
        world.start_agent()
        deadline = time.monotonic() + 20  # connected: time only the update itself
        while not any(st.state is DeviceState.ONLINE for st in _statuses(watcher)):
            assert time.monotonic() < deadline, "agent never came online"
            time.sleep(0.05)
        worker, result = _publish_in_background(world, 1)
        _wait_status(watcher, 1, UpdateOutcome.DOWNLOADING, timeout=15)
        started = time.monotonic()
        _wait_status(watcher, 1, UpdateOutcome.COMMITTED, timeout=30)
        full_update_s = time.monotonic() - started  # manifest accepted -> committed
        worker.join(40)
        assert result and result[0].devices[DEVICE].outcome is Outcome.COMMITTED
        committed = [
            s
            for s in _statuses(watcher)
            if s.update is not None and s.update.outcome is UpdateOutcome.COMMITTED
        ]
        assert committed[-1].model_version == "1" and committed[-1].slot in ("a", "b")
        assert _assert_serving(world, {1}) == 1

        phases: dict[str, int] = {}
        rng = random.Random(int(os.environ.get("FEDGE_TEST_SEED", "1234")))
        for version in range(2, VERSIONS + 1):
            worker, result = _publish_in_background(world, version)
            _wait_status(watcher, version, UpdateOutcome.DOWNLOADING, timeout=15)
            # Anywhere in the measured duration of a full update: early kills land in the
            # download, late ones in install / probation / commit.
            time.sleep(rng.uniform(0.0, full_update_s))
            world.kill_agent()  # SIGKILL: no clean stop, the will says offline
            state = _committed_on_disk(world)
            phase = _phase(world, version, state)
            phases[phase] = phases.get(phase, 0) + 1
            world.start_agent()
            _assert_serving(world, {version - 1, version})  # old or new, never partial
            worker.join(60)
            assert result, "publisher did not finish"
            outcome = result[0].devices[DEVICE]
            assert outcome.outcome is Outcome.COMMITTED, outcome
            deadline = time.monotonic() + 10
            while _assert_serving(world, {version - 1, version}) != version:
                assert time.monotonic() < deadline, f"v{version} committed but not served"
                time.sleep(0.1)
            _assert_only_committed_slots(world)
        kills = sum(phases.values())
        print(f"full update {full_update_s:.2f} s; {kills} SIGKILLs by phase: {phases}")
        assert kills >= 20
        assert phases.get("download", 0) >= 1, phases
    finally:
        watcher.close()


def test_signed_rollback_command_reaches_the_agent(world: World) -> None:
    """``fedge cloud rollback``: the agent re-activates v1; the floor stays at 2."""
    world.start_agent()
    for version in (1, 2):
        report = world.publish(version)
        assert report.devices[DEVICE].outcome is Outcome.COMMITTED, report.devices[DEVICE]
    assert _assert_serving(world, {2}) == 2
    home, port = world.broker.home, world.broker.port
    result = send_command(
        home, CommandAction.ROLLBACK, DEVICE, host="127.0.0.1", port=port, timeout_s=20
    )
    assert (result.outcome, result.version) == ("rolled_back", 1), result
    assert _assert_serving(world, {1}) == 1
    world.kill_agent()
    state = _committed_on_disk(world)
    assert state["floor"] == 2 and state["command_seq"] == result.seq
    world.start_agent()
    assert _assert_serving(world, {1}) == 1  # the rollback survives a restart
    # The retained v2 manifest comes back on reconnect: the floor (2) refuses to reinstall.
    assert _committed_on_disk(world)["floor"] == 2
