"""``cloud.rollout.candidates.drop_candidates`` over an in-memory broker: the artifact each
device is sent comes from its own retained status, commands are really signed and verified
(``verify_command``) by devices answering as the updater does, several answers on one
connection are each attributed to their device, and what needs no command gets none.
The rollout's rollback commands share the answer collection (every device's answer counts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from cloud.deployment.link import Incoming
from cloud.keys import KeyHome
from cloud.rollout import candidates, delivery
from cloud.rollout.candidates import DropOutcome, drop_candidates
from shared.precision import Precision
from shared.protocol import topics
from shared.protocol.codec import decode_message_as, encode_message
from shared.protocol.commands import Command, CommandAction, verify_command
from shared.protocol.messages import (
    CommandMessage,
    DeviceState,
    ServingInfo,
    StatusMessage,
    UpdateInfo,
    UpdateOutcome,
)
from tests.fakes.broker import FakeClient, InMemoryBroker

DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")


def _info(version: int, artifact_id: str, slot: Literal["a", "b"] = "b") -> ServingInfo:
    return ServingInfo(
        model_id="cnn",
        version=version,
        artifact_id=artifact_id,
        sha256="0" * 64,
        precision=Precision.INT8,
        slot=slot,
    )


@dataclass
class Device:
    """Answers commands as ``edge.updater`` does (verified, K6, then drop or refuse)."""

    broker: InMemoryBroker
    home: KeyHome
    device_id: str
    candidate: ServingInfo | None
    silent: bool = False
    seq: int = 0
    commands: list[Command] = field(default_factory=list)

    def start(self) -> None:
        client = self.broker.connect(self.device_id)
        client.on_message = self._on_message
        client.subscribe(topics.device_cmd(self.device_id))
        self._status(None, retain=True)

    def _status(self, update: UpdateInfo | None, *, retain: bool = True) -> None:
        status = StatusMessage(
            device_id=self.device_id,
            sent_at=time.time(),
            state=DeviceState.ONLINE,
            serving=_info(1, "1" * 32, "a"),
            candidate=self.candidate,
            update=update,
        )
        topic = topics.device_status(self.device_id)
        self.broker.publish(self.device_id, topic, encode_message(status), retain=retain)

    def _on_message(self, msg: Incoming) -> None:
        envelope = decode_message_as(msg.payload, CommandMessage).envelope
        command = verify_command(
            envelope, self.home.trust_store(), device_id=self.device_id, last_seq=self.seq,
            now=int(time.time()),
        )  # fmt: skip
        self.seq = command.seq
        self.commands.append(command)
        if self.silent:
            return
        if command.action is CommandAction.ROLLBACK:
            self._status(UpdateInfo(version=1, outcome=UpdateOutcome.ROLLED_BACK))
            return
        if self.candidate is None:
            update = UpdateInfo(
                version=0, outcome=UpdateOutcome.COMMAND_FAILED, reason="no_candidate"
            )
        elif self.candidate.artifact_id != command.artifact_id:
            update = UpdateInfo(
                version=0, outcome=UpdateOutcome.COMMAND_FAILED, reason="candidate_mismatch"
            )
        else:
            update = UpdateInfo(
                version=self.candidate.version,
                outcome=UpdateOutcome.DROPPED,
                artifact_id=self.candidate.artifact_id,
            )
            self.candidate = None
        self._status(update)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> KeyHome:
    home = KeyHome(tmp_path_factory.mktemp("drop") / "keys")
    home.init()
    for d in DEVICES:
        home.enroll_device(d, hardware_id="hw-a")
    return home


@pytest.fixture()
def broker(monkeypatch: pytest.MonkeyPatch) -> InMemoryBroker:
    """The coordinator's connection goes to the in-memory broker."""
    broker = InMemoryBroker()

    class Link:
        def __init__(self, _home: KeyHome, *, host: str, port: int) -> None:
            self.client: FakeClient = broker.connect("fedge-coordinator")
            self.inbox = self.client.inbox

        def connect(self, subscriptions: list[str]) -> None:
            for s in subscriptions:
                self.client.subscribe(s)

        def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
            self.client.publish(topic, payload, retain=retain)

        def close(self) -> None:
            broker.clients.remove(self.client)

    monkeypatch.setattr(candidates, "CoordinatorLink", Link)
    monkeypatch.setattr(delivery, "CoordinatorLink", Link)
    return broker


def _fleet(broker: InMemoryBroker, home: KeyHome, **held: Any) -> dict[str, Device]:
    devices = {d: Device(broker, home, d, held.get(d.replace("-", "_"))) for d in DEVICES}
    for dev in devices.values():
        dev.start()
    return devices


def test_each_device_is_sent_its_own_candidate_of_the_version(
    broker: InMemoryBroker, home: KeyHome
) -> None:
    devices = _fleet(
        broker, home, dev_a=_info(2, "a" * 32), dev_b=_info(2, "b" * 32), dev_c=_info(3, "c" * 32)
    )
    results = drop_candidates(
        home, list(DEVICES), host="h", port=1, version=("cnn", 2), timeout_s=2, discover_s=1
    )
    # two variants of cnn@2, each dropped by its own artifact id, both answers attributed
    assert (results["dev-a"].outcome, results["dev-a"].artifact_id) == (
        DropOutcome.DROPPED,
        "a" * 32,
    )
    assert (results["dev-b"].outcome, results["dev-b"].artifact_id) == (
        DropOutcome.DROPPED,
        "b" * 32,
    )
    assert devices["dev-a"].candidate is None and devices["dev-b"].candidate is None
    # another version's candidate, and none at all: nothing sent, nothing to do
    assert (results["dev-c"].outcome, results["dev-c"].reason) == (
        DropOutcome.NOT_HELD,
        "other_candidate",
    )
    assert (results["dev-d"].outcome, results["dev-d"].reason) == (
        DropOutcome.NOT_HELD,
        "no_candidate",
    )
    assert devices["dev-c"].commands == [] and devices["dev-d"].commands == []
    assert devices["dev-c"].candidate is not None
    assert all(r.outcome.done for r in results.values())
    [command] = devices["dev-a"].commands
    assert command.action is CommandAction.DROP_CANDIDATE and results["dev-a"].seq == command.seq


def test_operator_artifact_already_dropped_mismatch_and_silence(
    broker: InMemoryBroker, home: KeyHome
) -> None:
    devices = _fleet(broker, home, dev_a=_info(2, "a" * 32), dev_c=_info(2, "c" * 32))
    devices["dev-d"].silent = True
    results = drop_candidates(
        home, list(DEVICES), host="h", port=1, artifact_id="a" * 32, timeout_s=1
    )
    assert results["dev-a"].outcome is DropOutcome.DROPPED
    # asked although it holds nothing: its "no_candidate" is done, not a failure
    assert (results["dev-b"].outcome, results["dev-b"].reason) == (
        DropOutcome.NOT_HELD,
        "no_candidate",
    )
    assert (results["dev-c"].outcome, results["dev-c"].reason) == (
        DropOutcome.FAILED,
        "candidate_mismatch",
    )
    assert devices["dev-c"].candidate is not None
    assert (results["dev-d"].outcome, results["dev-d"].reason) == (DropOutcome.TIMEOUT, "no_answer")
    assert [r.outcome.done for r in results.values()] == [True, True, False, False]
    assert all(len(devices[d].commands) == 1 for d in DEVICES)


def test_a_device_without_a_retained_status_is_not_guessed(
    broker: InMemoryBroker, home: KeyHome
) -> None:
    dev = Device(broker, home, "dev-a", _info(2, "a" * 32))
    client = broker.connect("dev-a")
    client.on_message = dev._on_message
    client.subscribe(topics.device_cmd("dev-a"))  # online, but never announced itself
    results = drop_candidates(
        home, ["dev-a"], host="h", port=1, version=("cnn", 2), timeout_s=1, discover_s=0.3
    )
    assert (results["dev-a"].outcome, results["dev-a"].reason) == (DropOutcome.FAILED, "no_status")
    assert dev.commands == []


def test_exactly_one_of_artifact_and_version(home: KeyHome) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        drop_candidates(home, ["dev-a"], host="h", port=1)
    with pytest.raises(ValueError, match="exactly one"):
        drop_candidates(home, ["dev-a"], host="h", port=1, artifact_id="a" * 32, version=("m", 1))


def test_rollback_records_every_devices_answer_on_one_connection(
    broker: InMemoryBroker, home: KeyHome
) -> None:
    """Each status is parsed once and attributed to its device: every answer counts, in
    whatever order the devices answer (here the first device asked never does; a second
    parse of one message would be dropped as a duplicate and the others' answers lost)."""
    devices = _fleet(broker, home)
    devices["dev-a"].silent = True
    link = delivery.PublisherLink(home, lambda: None, lambda: ("h", 1))  # type: ignore[arg-type,return-value]
    answers = link.rollback(list(DEVICES), timeout_s=1)
    assert {d: a.answer for d, a in answers.items()} == {
        "dev-a": delivery.Answer.ROLLBACK_FAILED,
        "dev-b": delivery.Answer.ROLLED_BACK,
        "dev-c": delivery.Answer.ROLLED_BACK,
        "dev-d": delivery.Answer.ROLLED_BACK,
    }
    assert answers["dev-a"].reason == "no_answer"
    assert all(devices[d].commands[0].action is CommandAction.ROLLBACK for d in DEVICES)
