"""The publisher's decisions on an in-memory broker (issue 9, classes 1, 2 and 12).

Fast unit tests of the logic; the same publisher runs against real Mosquitto and real
agents in ``tests/security/test_identity_from_topic.py`` and ``test_delivery_e2e.py``.
A fake device answers each manifest synchronously with the status a real updater sends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud.deployment.link import Incoming
from cloud.deployment.publisher import Outcome, Publisher, PublishReport, select_devices
from cloud.keys import KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from shared.artifacts.manifest import manifest_from_bytes
from shared.precision import Precision
from shared.protocol import topics
from shared.protocol.codec import decode_message_as, encode_message
from shared.protocol.messages import (
    DeviceState,
    ManifestMessage,
    ServingInfo,
    StatusMessage,
    UpdateInfo,
    UpdateOutcome,
)
from tests.fakes.broker import InMemoryBroker, NotAuthorizedError, device_acl

INT8 = b"int8-model-" * 50
FLOAT32 = b"float32-model-" * 400
AID = "ab" * 16


@dataclass
class FakeDevice:
    """Answers a manifest the way a real updater does: commit, or fail with ``reason``."""

    broker: InMemoryBroker
    device_id: str
    answer: str = "commit"  # "commit" | "fail:<reason>" | "silent"
    accepts: tuple[str, ...] = ("int8", "float32")
    floor: int = 0
    serving: ServingInfo | None = None
    manifests: list[str] = field(default_factory=list)

    def start(self) -> None:
        client = self.broker.connect(self.device_id)
        client.on_message = self._on_message
        client.subscribe(topics.device_manifest(self.device_id))
        self.announce()

    def status(self, update: UpdateInfo | None = None, **overrides: object) -> bytes:
        fields: dict[str, object] = {
            "device_id": self.device_id,
            "sent_at": time.time(),
            "state": DeviceState.ONLINE,
            "serving": self.serving,
            "floor": self.floor,
            "accepts": self.accepts,
            "update": update,
        }
        fields.update(overrides)
        return encode_message(StatusMessage.model_validate(fields))

    def announce(self) -> None:
        topic = topics.device_status(self.device_id)
        self.broker.publish(self.device_id, topic, self.status(), retain=True)

    def _on_message(self, msg: Incoming) -> None:
        envelope = decode_message_as(msg.payload, ManifestMessage).envelope
        m = manifest_from_bytes(envelope.payload_bytes())
        self.manifests.append(m.artifact_id)
        topic = topics.device_status(self.device_id)
        if self.answer == "silent":
            return
        if self.answer.startswith("fail:"):
            info = UpdateInfo(
                version=m.version,
                outcome=UpdateOutcome.FAILED,
                reason=self.answer[5:],
                artifact_id=m.artifact_id,
            )
            self.broker.publish(self.device_id, topic, self.status(info), retain=True)
            return
        self.serving = ServingInfo(
            model_id=m.model_id,
            version=m.version,
            artifact_id=m.artifact_id,
            sha256=m.sha256,
            precision=m.precision,
            slot="a",
        )
        self.floor = m.version
        info = UpdateInfo(
            version=m.version, outcome=UpdateOutcome.COMMITTED, artifact_id=m.artifact_id
        )
        self.broker.publish(self.device_id, topic, self.status(info), retain=True)


@dataclass
class World:
    home: KeyHome
    registry: Registry
    broker: InMemoryBroker

    def device(self, device_id: str, **kw: object) -> FakeDevice:
        device = FakeDevice(self.broker, device_id, **kw)  # type: ignore[arg-type]
        device.start()
        return device

    def publish(self, ref: str, devices: list[str], timeout_s: float = 0.5) -> PublishReport:
        def connect(subscriptions: list[str]):  # type: ignore[no-untyped-def]
            return self.broker.connect("fedge-coordinator", subscriptions)

        pub = Publisher(self.registry, self.home, host="-", port=0, connect=connect)
        targets = select_devices(self.home, devices, None)
        return pub.publish(ref, targets, timeout_s=timeout_s, discover_s=0.2)


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    home = KeyHome(tmp_path / "keys")
    home.init()
    for d in ("dev-a", "dev-b"):
        home.enroll_device(d, hardware_id="hw-a")
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "store")
    registry.create_version(
        "cnn",
        spec={},
        source=VersionSource.TRAINED,
        artifacts=[NewArtifact("tflite", "int8", INT8, ArtifactStatus.APPROVED)],
    )
    registry.create_version(  # v2: int8 missed the budget, float32 is approved
        "cnn",
        spec={},
        source=VersionSource.TRAINED,
        artifacts=[
            NewArtifact("tflite", "int8", INT8 + b"2", ArtifactStatus.REJECTED, reason="drop"),
            NewArtifact("tflite", "float32", FLOAT32, ArtifactStatus.APPROVED),
        ],
    )
    yield World(home, registry, InMemoryBroker(device_acl))
    registry.close()


def test_the_acl_of_the_fake_is_the_generated_one() -> None:
    broker = InMemoryBroker(device_acl)
    broker.publish("dev-a", topics.device_status("dev-a"), b"x")
    with pytest.raises(NotAuthorizedError):
        broker.publish("dev-a", topics.device_status("dev-b"), b"x")


def test_a_status_claiming_another_device_is_dropped_and_counted(world: World) -> None:
    """Class 1: with dev-a's credentials, on dev-a's own topic, a statement about dev-b."""
    world.device("dev-a")
    victim = world.device("dev-b", answer="silent")
    liar = FakeDevice(
        world.broker,
        "dev-b",
        serving=ServingInfo(
            model_id="cnn",
            version=1,
            artifact_id=AID,
            sha256=hashlib.sha256(INT8).hexdigest(),
            precision=Precision.INT8,
            slot="a",
        ),
    )
    forged = liar.status()  # claims: "dev-b serves cnn@1"
    world.broker.publish("dev-a", topics.device_status("dev-a"), forged, retain=True)
    report = world.publish("cnn@1", ["dev-a", "dev-b"])
    assert report.devices["dev-a"].outcome is Outcome.COMMITTED  # control: dev-a itself
    assert report.devices["dev-b"].outcome is Outcome.TIMEOUT  # not skipped, not committed
    assert victim.manifests, "dev-b was skipped on the word of dev-a"
    assert report.dropped.get("identity_mismatch", 0) >= 1


def test_a_commit_is_serving_the_exact_artifact(world: World) -> None:
    """Class 2: same model and version but another file is not the target."""
    wrong = ServingInfo(
        model_id="cnn",
        version=1,
        artifact_id=AID,
        sha256="0" * 64,
        precision=Precision.INT8,
        slot="a",
    )
    dev = world.device("dev-a", serving=wrong, floor=0, answer="silent")
    report = world.publish("cnn@1", ["dev-a"])
    assert report.devices["dev-a"].outcome is Outcome.TIMEOUT
    assert dev.manifests  # it was sent the real one


def test_a_device_already_serving_the_target_is_committed_without_a_send(world: World) -> None:
    exact = ServingInfo(
        model_id="cnn",
        version=1,
        artifact_id=AID,
        sha256=hashlib.sha256(INT8).hexdigest(),
        precision=Precision.INT8,
        slot="b",
    )
    dev = world.device("dev-a", serving=exact, floor=1)
    report = world.publish("cnn@1", ["dev-a"])
    assert report.devices["dev-a"].outcome is Outcome.COMMITTED
    assert dev.manifests == [] and report.bytes_sent == 0


def test_an_artifact_no_profile_accepts_is_refused_before_anything_is_sent(world: World) -> None:
    """Class 12: v2's only approved artifact is float32; dev-a accepts int8 only."""
    only_int8 = world.device("dev-a", accepts=("int8",))
    both = world.device("dev-b", accepts=("int8", "float32"))
    report = world.publish("cnn@2", ["dev-a", "dev-b"])
    a, b = report.devices["dev-a"], report.devices["dev-b"]
    assert (a.outcome, a.reason) == (Outcome.FAILED, "precision_not_accepted")
    assert only_int8.manifests == []  # nothing was sent to it
    assert (b.outcome, b.precision) == (Outcome.COMMITTED, "float32")  # the other proceeds
    assert both.serving is not None and both.serving.sha256 == hashlib.sha256(FLOAT32).hexdigest()


def test_a_version_at_or_below_the_floor_is_refused_up_front(world: World) -> None:
    dev = world.device("dev-a", floor=1)
    report = world.publish("cnn@1", ["dev-a"])
    assert (report.devices["dev-a"].outcome, report.devices["dev-a"].reason) == (
        Outcome.FAILED,
        "replay",
    )
    dev2 = world.device("dev-b", floor=5)
    report = world.publish("cnn@2", ["dev-b"])
    assert report.devices["dev-b"].reason == "older_than_installed"
    assert dev.manifests == [] and dev2.manifests == []


def test_a_live_failure_for_this_artifact_fails_the_device(world: World) -> None:
    world.device("dev-a", answer="fail:hash_mismatch")
    report = world.publish("cnn@1", ["dev-a"])
    assert (report.devices["dev-a"].outcome, report.devices["dev-a"].reason) == (
        Outcome.FAILED,
        "hash_mismatch",
    )


def test_a_retained_or_foreign_failure_decides_nothing(world: World) -> None:
    dev = world.device("dev-a", answer="silent")
    other = UpdateInfo(
        version=1, outcome=UpdateOutcome.FAILED, reason="hash_mismatch", artifact_id=AID
    )
    # A stale retained failure from an earlier publish, then a live one about another artifact.
    world.broker.publish("dev-a", topics.device_status("dev-a"), dev.status(other), retain=True)
    report = world.publish("cnn@1", ["dev-a"], timeout_s=0.3)
    assert report.devices["dev-a"].outcome is Outcome.TIMEOUT
