"""``drop_candidate`` on the device (``docs/protocol.md`` §6, §15 U2), without a broker.

A valid command for the held candidate commits ``state.json`` without it, tells the shadow
evaluator it is gone and erases its slot file; the serving model, the committed slot and
the floor stay exactly as they were. Every refusal changes nothing but, once the command
verified, the spent ``seq``; each refusal test then shows that the same command without
the one defect it targets is carried out, so only that defence stood in the way. A crash
at any write leaves the candidate either held intact or dropped, never half of each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.status import build_status
from edge.updater import Slot
from edge.updater.state import StateStore
from shared.artifacts import Purpose, Release, Role
from shared.crypto import SigningKey
from shared.protocol.codec import encode_message
from shared.protocol.commands import Command, CommandAction, sign_command
from shared.protocol.messages import CommandMessage, DeviceState, UpdateOutcome
from tests.edge.test_updater import Crash, CrashAt
from tests.edge.test_updater_purposes import V1, V2, PurposeDevice, build
from tests.helpers.release import HW, NOW, Fleet
from tests.helpers.updater import snapshot


def drop_payload(
    fleet: Fleet,
    artifact_id: str | None,
    *,
    key: SigningKey | None = None,
    certificate: object = None,
    **fields: object,
) -> bytes:
    """A signed ``drop_candidate`` for dev-a (coordinator key unless told otherwise).

    Built with ``model_construct`` so a test can also sign what the schema refuses.
    """
    args: dict[str, object] = dict(
        spec_version=1,
        action=CommandAction.DROP_CANDIDATE,
        device_id="dev-a",
        group=None,
        seq=10,
        issued_at=NOW - 1,
        expires=NOW + 60,
        artifact_id=artifact_id,
        to_version=None,
    )
    args.update(fields)
    cmd = Command.model_construct(**args)  # type: ignore[arg-type]
    env = sign_command(
        cmd,
        key or fleet.coordinator,
        certificate=certificate or fleet.coordinator_cert,  # type: ignore[arg-type]
    )
    return encode_message(CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env))


@pytest.fixture()
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture()
def holding(fleet: Fleet, tmp_path: Path) -> tuple[PurposeDevice, Release]:
    """dev-a serving v1 (slot a) and holding v2 as its shadow candidate (slot b)."""
    dev = PurposeDevice(fleet, tmp_path / "state")
    dev.restart()
    dev.deliver(build(fleet, V1, 1, Purpose.INSTALL))
    shadow = build(fleet, V2, 2, Purpose.SHADOW)
    dev.deliver(shadow)
    assert dev.last.outcome is UpdateOutcome.HELD
    assert dev.updater.state.candidate is not None
    return dev, shadow


def _slot_b(dev: PurposeDevice) -> Path:
    return dev.state_dir / "slots" / "b.tflite"


def _assert_dropped(dev: PurposeDevice) -> None:
    state = dev.updater.state
    assert state.candidate is None and not _slot_b(dev).exists()
    assert state.active is Slot.A and set(state.slots) == {Slot.A} and state.floor == 1
    assert dev.serving.current == ("1", V1)
    assert b"candidate" not in (dev.state_dir / "state.json").read_bytes()


def _assert_held(dev: PurposeDevice, shadow: Release) -> None:
    held = dev.updater.state.candidate
    assert held is not None and held.record.artifact_id == shadow.manifest.artifact_id
    assert held.slot is Slot.B and _slot_b(dev).read_bytes() == V2
    assert dev.updater.state.active is Slot.A and dev.serving.current == ("1", V1)


def test_drop_erases_the_candidate_and_leaves_serving_and_floor(
    holding: tuple[PurposeDevice, Release],
) -> None:
    dev, shadow = holding
    aid = shadow.manifest.artifact_id
    slot_a = (dev.state_dir / "slots" / "a.tflite").read_bytes()
    loads, floor = dev.serving.loads, dev.updater.state.floor
    dev.updater.handle_command(drop_payload(dev.fleet, aid))
    report = dev.last
    assert (report.outcome, report.reason, report.version, report.artifact_id) == (
        UpdateOutcome.DROPPED,
        None,
        2,
        aid,
    )
    assert report.active_version == 1 and report.slot is Slot.A
    _assert_dropped(dev)
    assert dev.updater.state.command_seq == 10 and dev.updater.state.floor == floor
    assert (dev.state_dir / "slots" / "a.tflite").read_bytes() == slot_a
    assert dev.serving.loads == loads  # the serving model was not even reloaded
    assert dev.shadows.calls[-1] is None  # the evaluator was told it is gone
    status = build_status(
        device_id="dev-a",
        hardware_id=HW,
        state=DeviceState.ONLINE,
        sent_at=NOW,
        updater_state=dev.updater.state,
    )
    assert status.candidate is None and status.serving is not None
    assert status.serving.version == 1
    dev.shadows.calls.clear()
    dev.restart()  # committed: nothing comes back
    _assert_dropped(dev)
    assert dev.shadows.calls == []


def test_a_second_drop_answers_no_candidate(holding: tuple[PurposeDevice, Release]) -> None:
    """What a coordinator resuming after a crash sees: it counts this as done."""
    dev, shadow = holding
    aid = shadow.manifest.artifact_id
    dev.updater.handle_command(drop_payload(dev.fleet, aid, seq=10))
    before = {p.name: p.read_bytes() for p in (dev.state_dir / "slots").iterdir()}
    dev.updater.handle_command(drop_payload(dev.fleet, aid, seq=11))
    assert (dev.last.outcome, dev.last.reason, dev.last.version) == (
        UpdateOutcome.COMMAND_FAILED,
        "no_candidate",
        0,
    )
    assert {p.name: p.read_bytes() for p in (dev.state_dir / "slots").iterdir()} == before
    _assert_dropped(dev)
    assert dev.updater.state.command_seq == 11  # spent all the same (§6)


def test_drop_naming_another_artifact_changes_nothing(
    holding: tuple[PurposeDevice, Release],
) -> None:
    dev, shadow = holding
    calls = list(dev.shadows.calls)
    dev.updater.handle_command(drop_payload(dev.fleet, "f" * 32, seq=10))
    assert (dev.last.outcome, dev.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "candidate_mismatch",
    )
    _assert_held(dev, shadow)
    assert dev.shadows.calls == calls  # the evaluator keeps running
    assert dev.updater.state.command_seq == 10
    dev.updater.handle_command(drop_payload(dev.fleet, shadow.manifest.artifact_id, seq=11))
    assert dev.last.outcome is UpdateOutcome.DROPPED  # the right artifact is dropped


def test_drop_with_nothing_held_changes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    dev = PurposeDevice(fleet, tmp_path / "state")
    dev.restart()
    dev.deliver(build(fleet, V1, 1, Purpose.INSTALL))
    dev.deliver(build(fleet, V2, 2, Purpose.INSTALL))  # v1 stays the rollback target
    slots = {p.name: p.read_bytes() for p in (dev.state_dir / "slots").iterdir()}
    state = dev.updater.state
    dev.updater.handle_command(drop_payload(fleet, "a" * 32))
    assert (dev.last.outcome, dev.last.reason) == (UpdateOutcome.COMMAND_FAILED, "no_candidate")
    assert {p.name: p.read_bytes() for p in (dev.state_dir / "slots").iterdir()} == slots
    assert dev.updater.state == state.model_copy(update={"command_seq": 10})
    assert dev.serving.current == ("2", V2) and dev.shadows.calls == []


def _forged(fleet: Fleet, aid: str) -> bytes:
    evil = SigningKey.generate()
    return drop_payload(
        fleet, aid, key=evil, certificate=fleet.cert(evil, Role.COORDINATOR, by=evil)
    )


# Each makes the valid drop defective in exactly one way; seq 5 was spent by the setup.
ATTACKS: dict[str, tuple[Callable[[Fleet, str], bytes], str]] = {
    "replayed_seq": (lambda f, a: drop_payload(f, a, seq=5), "replay"),
    "expired": (
        lambda f, a: drop_payload(f, a, issued_at=NOW - 120, expires=NOW - 60),
        "expired_command",
    ),
    "other_device": (lambda f, a: drop_payload(f, a, device_id="dev-b"), "wrong_recipient"),
    "other_group": (
        lambda f, a: drop_payload(f, a, device_id=None, group="garage"),
        "wrong_recipient",
    ),
    "forged_key": (_forged, "untrusted_key"),
    "release_key": (
        lambda f, a: drop_payload(f, a, key=f.release, certificate=f.release_cert),
        "untrusted_key",
    ),
    "no_artifact_id": (lambda f, a: drop_payload(f, None), "bad_message"),  # J2
    "with_to_version": (lambda f, a: drop_payload(f, a, to_version=2), "bad_message"),  # J2
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_refused_drop_changes_nothing(holding: tuple[PurposeDevice, Release], attack: str) -> None:
    dev, shadow = holding
    aid = shadow.manifest.artifact_id
    spend = drop_payload(dev.fleet, "f" * 32, seq=5)  # verifies, names another artifact
    dev.updater.handle_command(spend)
    assert dev.last.reason == "candidate_mismatch" and dev.updater.state.command_seq == 5
    before, calls = snapshot(dev.state_dir), list(dev.shadows.calls)
    make, reason = ATTACKS[attack]
    dev.updater.handle_command(make(dev.fleet, aid))
    assert (dev.last.outcome, dev.last.reason) == (UpdateOutcome.COMMAND_FAILED, reason)
    assert snapshot(dev.state_dir) == before and dev.shadows.calls == calls
    _assert_held(dev, shadow)
    dev.updater.handle_command(drop_payload(dev.fleet, aid, seq=6))  # without the defect
    assert dev.last.outcome is UpdateOutcome.DROPPED


def test_bad_signature_bytes_are_refused(holding: tuple[PurposeDevice, Release]) -> None:
    """The signature of one command over another command's payload (K1)."""
    from shared.protocol.codec import decode_message_as

    dev, shadow = holding
    aid = shadow.manifest.artifact_id
    good = decode_message_as(drop_payload(dev.fleet, aid), CommandMessage).envelope
    other = decode_message_as(drop_payload(dev.fleet, aid, seq=99), CommandMessage).envelope
    env = good.model_copy(update={"payload": other.payload})
    before = snapshot(dev.state_dir)
    swapped = CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env)
    dev.updater.handle_command(encode_message(swapped))
    assert (dev.last.outcome, dev.last.reason) == (UpdateOutcome.COMMAND_FAILED, "bad_signature")
    assert snapshot(dev.state_dir) == before
    _assert_held(dev, shadow)
    dev.updater.handle_command(
        encode_message(CommandMessage(device_id="dev-a", sent_at=NOW, envelope=good))
    )
    assert dev.last.outcome is UpdateOutcome.DROPPED


def test_a_failed_commit_keeps_the_candidate(
    holding: tuple[PurposeDevice, Release], monkeypatch: pytest.MonkeyPatch
) -> None:
    dev, shadow = holding
    real = dev.updater._store.save
    saves: list[object] = []

    def save(state: object) -> None:
        saves.append(state)
        if len(saves) == 2:  # the seq commit passes, the drop's commit fails
            raise OSError(28, "No space left on device")
        real(state)

    monkeypatch.setattr(dev.updater._store, "save", save)
    calls = list(dev.shadows.calls)
    dev.updater.handle_command(drop_payload(dev.fleet, shadow.manifest.artifact_id))
    assert (dev.last.outcome, dev.last.reason) == (UpdateOutcome.COMMAND_FAILED, "storage_error")
    _assert_held(dev, shadow)
    assert dev.shadows.calls == calls
    dev.restart()
    _assert_held(dev, shadow)


def test_crash_at_every_step_leaves_the_candidate_held_or_dropped(
    holding: tuple[PurposeDevice, Release], tmp_path: Path
) -> None:
    dev, shadow = holding
    aid = shadow.manifest.artifact_id
    template = tmp_path / "template"
    shutil.copytree(dev.state_dir, template)
    counter = CrashAt(at=0)
    with pytest.MonkeyPatch.context() as mp:
        counter.install(mp)
        dev.updater.handle_command(drop_payload(dev.fleet, aid))
    assert dev.last.outcome is UpdateOutcome.DROPPED
    steps = counter.seen
    assert steps >= 8  # two atomic state.json commits and the slot erase
    outcomes: set[str] = set()
    for at in range(1, steps + 1):
        run = PurposeDevice(dev.fleet, tmp_path / f"crash{at}")
        shutil.copytree(template, run.state_dir)
        run.restart()
        with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
            CrashAt(at).install(mp)
            run.updater.handle_command(drop_payload(dev.fleet, aid))
        # As the crash left the disk, before any recovery: a state.json that still names
        # the candidate names an intact file (the commit comes before the erase).
        on_disk = StateStore(run.state_dir).load()
        if on_disk.candidate is not None:
            assert on_disk.candidate.record.matches(_slot_b(run).read_bytes())
        run.shadows.calls.clear()
        run.restart()  # the agent comes back from disk
        # Only ever a committed slot or the intact candidate: no torn or stray slot file.
        assert not list((run.state_dir / "slots").glob(".*"))
        if run.updater.state.candidate is None:
            _assert_dropped(run)
            assert run.shadows.calls == []
            outcomes.add("dropped")
        else:
            _assert_held(run, shadow)
            assert run.shadows.calls == [(V2, aid)]  # handed to the evaluator again
            outcomes.add("held")
            run.updater.handle_command(drop_payload(dev.fleet, aid, seq=11))  # the retry
            assert run.last.outcome is UpdateOutcome.DROPPED
            _assert_dropped(run)
    assert outcomes == {"held", "dropped"}  # crashes both before and after the commit
