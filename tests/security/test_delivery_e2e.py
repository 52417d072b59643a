"""End to end through a real Mosquitto (TLS + passwords + ACLs from ``cloud.broker``).

The registry holds real int8 ``.tflite`` models; each device is the agent that ships, a
real :class:`~edge.agent.Agent` run in-process on its own thread, configured from its
enrollment bundle as ``fedge edge run --bundle`` does, with a firmware profile and its
own LiteRT :class:`~edge.inference.Predictor` as probation. The coordinator side is the
product's :class:`~cloud.deployment.publisher.Publisher`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from cloud.broker import write_broker_config
from cloud.broker_process import start_broker, wait_listening
from cloud.deployment.publisher import Outcome, Publisher, PublishReport, select_devices
from cloud.deployment.release import Signer, Target, build_plan
from cloud.keys import COORDINATOR_USER, MONITOR_USER, KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from edge.agent import Agent, AgentConfig
from edge.inference import ModelInfo, Predictor, Probe
from edge.inference.runtime import make_interpreter
from edge.keystore import load_device_keys
from edge.updater import Updater, UpdateReport
from shared.artifacts import ArtifactBuilder, Encoding, chunk_ad, sign_manifest, unwrap_content_key
from shared.crypto import encrypt
from shared.errors import NotDeployableError
from shared.precision import Precision
from shared.profiles import DeviceProfile, profile_from_toml
from shared.protocol import topics
from shared.protocol.codec import decode_message_as, encode_chunk, encode_message
from shared.protocol.messages import (
    DeviceState,
    ManifestMessage,
    ServingInfo,
    StatusMessage,
    UpdateOutcome,
)
from tests.helpers.models import BuiltModels
from tests.helpers.mosquitto import free_port
from tests.security.conftest import Client, FleetBroker, connect

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ("dev-a", "dev-b", "dev-c")
FIRMWARE = ROOT / "firmware_configs" / "thermostat_sensor.toml"


def _profile() -> DeviceProfile:
    """The thermostat firmware profile, for the test fleet's hardware and models.

    The devices are enrolled as ``hw-a`` without groups; the test models are int8 CNNs
    of a few hundred KB.
    """
    firmware = profile_from_toml(FIRMWARE.read_text(), source=str(FIRMWARE))
    return firmware.model_copy(
        update={
            "hardware_id": "hw-a",
            "groups": (),
            "max_model_bytes": 4_000_000,
            "precisions": (Precision.INT8,),
        }
    )


class GatedPredictor(Predictor):
    """The agent's LiteRT predictor; while the device's gate is closed, loads (probation) wait."""

    def __init__(self, profile: DeviceProfile, gate: Callable[[], threading.Event | None]) -> None:
        super().__init__(num_threads=profile.inference_threads, profile=profile)
        self._gate = gate

    def load(
        self, path: str | Path, version: str | None = None, *, probe: Probe | None = None
    ) -> ModelInfo:
        gate = self._gate()
        if gate is not None:
            gate.wait(20)
        return super().load(path, version, probe=probe)


@dataclass
class Device:
    """One agent and the thread that runs it."""

    agent: Agent
    thread: threading.Thread
    errors: list[BaseException]

    @property
    def updater(self) -> Updater:
        assert self.agent.updater is not None
        return self.agent.updater

    def stop(self) -> None:
        """A clean stop (what SIGTERM does to ``fedge edge run``)."""
        self.agent.request_stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), f"{self.agent.config.device_id} did not stop"
        assert not self.errors, self.errors


@dataclass
class World:
    broker: FleetBroker
    registry: Registry
    base: Path
    profile: DeviceProfile = field(default_factory=_profile)
    clients: dict[str, Device] = field(default_factory=dict)
    predictors: dict[str, Predictor] = field(default_factory=dict)
    reports: dict[str, list[UpdateReport]] = field(default_factory=dict)
    gates: dict[str, threading.Event] = field(default_factory=dict)

    def state_dir(self, device_id: str) -> Path:
        """The agent's state directory (outbox; the updater's A/B state in ``updater/``)."""
        return self.base / "devices" / device_id

    def start_device(self, device_id: str) -> Device:
        predictor = GatedPredictor(self.profile, lambda: self.gates.get(device_id))
        self.predictors[device_id] = predictor
        self.reports[device_id] = []
        config = AgentConfig(
            device_id=device_id,
            broker_url=f"mqtts://127.0.0.1:{self.broker.port}",
            profile=self.profile,
            state_dir=self.state_dir(device_id),
            http_port=None,
            reconnect_max_s=2.0,
            update_quiet_s=1.0,
        ).with_bundle(self.broker.home.device_dir(device_id))
        agent = Agent(config, predictor=predictor, on_update=self.reports[device_id].append)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                agent.run()
            except BaseException as exc:  # surfaced by Device.stop
                errors.append(exc)

        device = Device(
            agent, threading.Thread(target=run, name=f"agent-{device_id}", daemon=True), errors
        )
        device.thread.start()
        self.clients[device_id] = device
        return device

    def publish(
        self, ref: str, devices: tuple[str, ...] = DEVICES, *, timeout_s: float = 40
    ) -> PublishReport:
        targets = select_devices(self.broker.home, list(devices), None)
        pub = Publisher(self.registry, self.broker.home, host="127.0.0.1", port=self.broker.port)
        return pub.publish(ref, targets, timeout_s=timeout_s, discover_s=0.5)

    def restart_broker(self) -> None:
        self.broker.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
        self.broker.proc.wait(10)
        self.broker.proc = start_broker(self.broker.files)
        wait_listening(self.broker.port, proc=self.broker.proc)

    def wait_report(self, device_id: str, outcome: UpdateOutcome, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(r.outcome is outcome for r in self.reports[device_id]):
            assert time.monotonic() < deadline, f"{device_id} never reported {outcome}"
            time.sleep(0.05)


@pytest.fixture()
def world(tmp_path: Path, models: BuiltModels) -> Iterator[World]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    for d in DEVICES:
        home.enroll_device(d, hardware_id="hw-a")
    port = free_port()
    files = write_broker_config(home, tmp_path / "broker", port=port)
    proc = start_broker(files)
    wait_listening(port, proc=proc)
    # The layout `fedge` uses under FEDGE_HOME=tmp_path, so the CLI can be run on it too.
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    for path, status in (
        (models.int8_a, ArtifactStatus.APPROVED),
        (models.int8_b, ArtifactStatus.APPROVED),
        (models.int8_b, ArtifactStatus.REJECTED),
    ):
        art = NewArtifact("tflite", "int8", path.read_bytes(), status, reason="test")
        registry.create_version("cnn", spec={}, source=VersionSource.TRAINED, artifacts=[art])
    w = World(FleetBroker(home, files, port, proc), registry, tmp_path)
    yield w
    for gate in w.gates.values():
        gate.set()  # never leave an agent blocked in probation
    for client in w.clients.values():
        client.agent.request_stop()  # all at once: each stop waits for its offline status
    for client in w.clients.values():
        client.stop()
    registry.close()
    w.broker.proc.terminate()
    w.broker.proc.wait(10)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_serving(world: World, device_id: str, version: str, model: Path) -> None:
    active = world.clients[device_id].updater.active_model()
    assert active is not None and active[1] == version
    assert _sha(active[0]) == _sha(model)
    _, served_by = world.predictors[device_id].predict_versioned(np.zeros((1, 1, 28, 28), "f4"))
    assert served_by == version


def test_publish_reaches_every_device_then_upgrades(world: World, models: BuiltModels) -> None:
    for d in DEVICES:
        world.start_device(d)
    report = world.publish("cnn@1")
    assert {d: r.outcome for d, r in report.devices.items()} == dict.fromkeys(
        DEVICES, Outcome.COMMITTED
    )
    for d in DEVICES:
        _assert_serving(world, d, "1", models.int8_a)
    report = world.publish("cnn@2")  # the devices now report v1: a delta is tried
    assert all(r.outcome is Outcome.COMMITTED for r in report.devices.values())
    assert {r.encoding for r in report.devices.values()} <= {e.value for e in Encoding}
    for d in DEVICES:
        _assert_serving(world, d, "2", models.int8_b)
        assert world.clients[d].updater.state.floor == 2


def _fine_tuned(model: bytes) -> bytes:
    """``model`` with its largest int8 weight tensor moved by ±1 at 65% of the weights.

    What fine-tuning + requantization does to a deployed model: same layout, same
    quantization parameters, most weights one step away. Still a valid, loadable model.
    """
    interpreter = make_interpreter(model, num_threads=1)
    tensors = []
    for detail in interpreter.get_tensor_details():
        with contextlib.suppress(ValueError):
            value = interpreter.get_tensor(detail["index"])
            if value.dtype == np.int8 and value.any() and model.count(value.tobytes()) == 1:
                tensors.append(value)
    weights = max(tensors, key=lambda t: t.size)
    rng = np.random.default_rng(0)
    steps = rng.choice(np.array([-1, 1]), weights.size) * (rng.random(weights.size) < 0.65)
    tuned = np.clip(weights.ravel().astype(np.int16) + steps, -127, 127).astype(np.int8)
    offset = model.index(weights.tobytes())
    return model[:offset] + tuned.tobytes() + model[offset + weights.size :]


def test_fine_tuned_model_goes_out_as_a_bytediff_delta(
    world: World, models: BuiltModels, tmp_path: Path
) -> None:
    device = DEVICES[0]
    world.start_device(device)
    assert world.publish("cnn@1", (device,)).devices[device].outcome is Outcome.COMMITTED
    tuned = tmp_path / "tuned.tflite"
    tuned.write_bytes(_fine_tuned(models.int8_a.read_bytes()))
    art = NewArtifact("tflite", "int8", tuned.read_bytes(), ArtifactStatus.APPROVED)
    version = world.registry.create_version(
        "cnn", spec={}, source=VersionSource.TRAINED, artifacts=[art]
    )
    result = world.publish(version.ref, (device,)).devices[device]
    assert (result.outcome, result.encoding, result.base_version) == (
        Outcome.COMMITTED,
        Encoding.ZSTD_BYTEDIFF,
        1,
    )
    _assert_serving(world, device, str(version.number), tuned)


def test_another_model_with_an_old_version_number_is_never_reported_committed(
    world: World, models: BuiltModels
) -> None:
    """The floor is one number per device across model lines: ``other@1`` after ``cnn@1``
    is refused by the device as a replay, and below the floor the publisher refuses it
    up front; the publisher must not mistake the device's old "serving 1" for success."""
    device = DEVICES[0]
    world.start_device(device)
    assert world.publish("cnn@1", (device,)).devices[device].outcome is Outcome.COMMITTED
    art = NewArtifact("tflite", "int8", models.int8_b.read_bytes(), ArtifactStatus.APPROVED)
    other = world.registry.create_version(
        "other", spec={}, source=VersionSource.TRAINED, artifacts=[art]
    )
    result = world.publish(other.ref, (device,)).devices[device]
    assert (result.outcome, result.reason) == (Outcome.FAILED, "replay")
    _assert_serving(world, device, "1", models.int8_a)

    assert world.publish("cnn@2", (device,)).devices[device].outcome is Outcome.COMMITTED
    result = world.publish(other.ref, (device,)).devices[device]
    assert (result.outcome, result.reason) == (Outcome.FAILED, "older_than_installed")
    _assert_serving(world, device, "2", models.int8_b)


def test_rejected_artifact_is_never_published(world: World) -> None:
    with pytest.raises(NotDeployableError):
        world.publish("cnn@3")


def test_tampered_chunk_on_the_wire_is_rejected(world: World, models: BuiltModels) -> None:
    world.start_device("dev-a")
    assert world.publish("cnn@1", ("dev-a",)).devices["dev-a"].outcome is Outcome.COMMITTED
    state_file = world.state_dir("dev-a") / "updater" / "state.json"
    state_before = state_file.read_bytes()
    home = world.broker.home
    records = select_devices(home, ["dev-a", "dev-b"], None)
    data = models.int8_b.read_bytes()
    target = Target("cnn", 2, "int8", hashlib.sha256(data).hexdigest())
    signer = Signer(*home.release_signer(), None)
    plan = build_plan(
        ArtifactBuilder(), data, target, records, None, signer=signer, now=time.time()
    )
    m = plan.release.manifest
    # dev-b is a legitimate recipient: it can forge a chunk with a valid GCM tag.
    dev_b_key = load_device_keys(home.device_dir("dev-b")).box_key
    key = unwrap_content_key(m, "dev-b", dev_b_key)
    body = encrypt(
        key, os.urandom(m.chunk_plain_length(0)), chunk_ad(m.artifact_id, 0, m.chunk_count)
    )
    forged = plan.release.chunks[0].__class__(m.artifact_id, 0, m.chunk_count, body)
    release_key, cert = home.release_signer()
    env = sign_manifest(m.for_devices(["dev-a"]), release_key, certificate=cert)
    coord = connect(world.broker, COORDINATOR_USER)
    try:
        message = ManifestMessage(device_id="dev-a", sent_at=time.time(), envelope=env)
        coord.publish(topics.device_manifest("dev-a"), encode_message(message), retain=True)
        world.wait_report("dev-a", UpdateOutcome.DOWNLOADING)
        time.sleep(0.3)  # let the chunk subscription settle
        coord.publish(topics.artifact_chunk(m.artifact_id, 0), encode_chunk(forged))
        for chunk in plan.release.chunks[1:]:
            coord.publish(topics.artifact_chunk(m.artifact_id, chunk.index), encode_chunk(chunk))
        world.wait_report("dev-a", UpdateOutcome.CHUNK_REJECTED)
        deadline = time.monotonic() + 10
        while world.clients["dev-a"].updater.missing() != (0,):  # the genuine rest arrives
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rejected = [r for r in world.reports["dev-a"] if r.outcome is UpdateOutcome.CHUNK_REJECTED]
        assert rejected[0].reason == "hash_mismatch"
        _assert_serving(world, "dev-a", "1", models.int8_a)
        assert state_file.read_bytes() == state_before
        # The genuine chunk still completes the download: nothing was lost.
        coord.publish(topics.artifact_chunk(m.artifact_id, 0), encode_chunk(plan.release.chunks[0]))
        world.wait_report("dev-a", UpdateOutcome.COMMITTED)
        deadline = time.monotonic() + 10
        while world.clients["dev-a"].updater.active_model()[1] != "2":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _assert_serving(world, "dev-a", "2", models.int8_b)
    finally:
        coord.close()


def test_broker_restart_mid_transfer_completes(world: World, models: BuiltModels) -> None:
    world.gates["dev-a"] = threading.Event()  # dev-a cannot commit before the restart
    for d in DEVICES:
        world.start_device(d)
    result: list[PublishReport] = []
    worker = threading.Thread(target=lambda: result.append(world.publish("cnn@1")))
    worker.start()
    world.wait_report("dev-a", UpdateOutcome.DOWNLOADING)
    world.restart_broker()
    world.gates["dev-a"].set()
    worker.join(60)
    assert result, "publisher did not finish"
    outcomes = {d: str(r.outcome) for d, r in result[0].devices.items()}
    assert outcomes == dict.fromkeys(DEVICES, "committed")
    for d in DEVICES:
        _assert_serving(world, d, "1", models.int8_a)


def _statuses_of(watcher: Client, device_id: str) -> list[StatusMessage]:
    with watcher.acked:
        payloads = [p for t, p in watcher.messages if t == topics.device_status(device_id)]
    return [decode_message_as(p, StatusMessage) for p in payloads]


def test_updater_announces_itself_and_leaves_a_last_will(world: World, models: BuiltModels) -> None:
    """Retained ``online`` status after connecting (what it serves), ``offline`` when cut off.

    The publisher stops waiting for status discovery once every target has spoken, so a
    device without a model must announce itself too.
    """
    watcher = connect(world.broker, MONITOR_USER)
    assert watcher.subscribe(topics.device_status("dev-a")) == [1]
    client = world.start_device("dev-a")
    assert watcher.wait(lambda: _statuses_of(watcher, "dev-a"), timeout=10)
    first = _statuses_of(watcher, "dev-a")[0]
    assert first.state is DeviceState.ONLINE and first.model_version is None
    assert first.hardware_id == "hw-a"

    report = world.publish("cnn@1", ("dev-a",))
    assert report.devices["dev-a"].outcome is Outcome.COMMITTED
    assert "discovered" in report.phases and report.phases["discovered"] < 0.5  # not the wait

    # Reconnect: the announcement now names the committed model.
    client.stop()
    world.clients.pop("dev-a")
    watcher.messages.clear()
    client = world.start_device("dev-a")
    assert watcher.wait(
        lambda: any(s.model_version == "1" for s in _statuses_of(watcher, "dev-a")), timeout=10
    )
    # A connection that drops without DISCONNECT (power cut): the broker sends the will.
    watcher.messages.clear()
    sock = client.agent.link._client.socket()
    assert sock is not None
    # The TCP connection dies under TLS, as in a power cut. Not ``SSLSocket.shutdown``: it
    # drops the TLS object first, and paho's thread would then read raw TLS records as MQTT
    # (a record's 0x17 byte is "command 16") and close the socket itself.
    socket.socket.shutdown(sock, socket.SHUT_RDWR)
    assert watcher.wait(
        lambda: any(s.state is DeviceState.OFFLINE for s in _statuses_of(watcher, "dev-a")),
        timeout=10,
    )
    watcher.close()


def test_publish_cli_reports_every_device(
    world: World, models: BuiltModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fedge cloud publish`` end to end: JSON for scripts, a readable summary for people."""
    from typer.testing import CliRunner

    from simulations.cli import app

    for d in DEVICES:
        world.start_device(d)
    monkeypatch.setenv("FEDGE_HOME", str(world.base))
    monkeypatch.delenv("FEDGE_DATABASE_URL", raising=False)
    broker = f"127.0.0.1:{world.broker.port}"
    args = ["cloud", "publish", "cnn@1", "--devices", "dev-a,dev-b", "--broker", broker]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {d: r["outcome"] for d, r in report["devices"].items()} == {
        "dev-a": "committed",
        "dev-b": "committed",
    }
    assert set(report["phases"]) >= {"discovered", "built", "manifests_sent", "chunks_sent"}
    assert report["bytes_sent"] > 0
    _assert_serving(world, "dev-a", "1", models.int8_a)

    # A rejected artifact is never sent: exit 2 with the reason, nothing changes.
    result = CliRunner().invoke(
        app, ["cloud", "publish", "cnn@3", "-d", "dev-c", "--broker", broker]
    )
    assert result.exit_code == 2 and "not_deployable" in result.output
    assert world.clients["dev-c"].updater.active_model() is None

    result = CliRunner().invoke(
        app, ["cloud", "publish", "cnn@2", "-d", "dev-c", "--broker", broker]
    )
    assert result.exit_code == 0, result.output
    assert "dev-c: committed" in result.stdout and "timeline: discovered" in result.stdout


def test_a_status_about_another_device_is_never_believed(world: World, models: BuiltModels) -> None:
    """Class 1 of issue 9, with only dev-a's credentials, on dev-a's own status topic.

    The forged status says dev-b serves exactly the target. The publisher attributes it to
    dev-a (its topic), drops it as an identity mismatch, and neither skips dev-b nor reports
    it committed: dev-b is offline and still serves nothing. (No agent runs as dev-a: the
    broker gives one session per identity, so the attacker IS dev-a here; dev-c is the
    control that really installs.)
    """
    world.start_device("dev-c")
    sha = _sha(models.int8_a)
    forged = StatusMessage(
        device_id="dev-b",
        sent_at=time.time(),
        state=DeviceState.ONLINE,
        serving=ServingInfo(
            model_id="cnn", version=1, artifact_id="ab" * 16, sha256=sha, precision="int8", slot="a"
        ),
        floor=1,
    )
    attacker = connect(world.broker, "dev-a")  # dev-a's real certificate and password
    watcher = connect(world.broker, MONITOR_USER)
    try:
        assert attacker.publish(topics.device_status("dev-a"), encode_message(forged), True) < 128
        attacker.close()
        report = world.publish("cnn@1", ("dev-b", "dev-c"), timeout_s=15)
        assert report.devices["dev-c"].outcome is Outcome.COMMITTED  # control
        assert report.devices["dev-b"].outcome is Outcome.TIMEOUT
        assert report.dropped.get("identity_mismatch", 0) >= 1
        # dev-b was not skipped: its signed manifest waits for it, retained.
        assert watcher.subscribe(topics.device_manifest("dev-b")) == [1]
        assert watcher.wait(lambda: watcher.messages, timeout=5)
    finally:
        attacker.close()
        watcher.close()
    _assert_serving(world, "dev-c", "1", models.int8_a)
