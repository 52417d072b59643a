# ruff: noqa: F811  (pytest fixtures imported from test_updater)
"""Signed commands on the device (K1-K6, R1-R3) without a broker.

Every refused command must be reported as ``command_failed`` with its reason AND leave
``state.json``, the slots and the model serving exactly as they were.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from edge.updater import Slot
from shared.artifacts import Release, Role
from shared.crypto import SigningKey
from shared.protocol.codec import decode_message_as, encode_chunk, encode_message
from shared.protocol.commands import Command, CommandAction, sign_command
from shared.protocol.messages import CommandMessage, ResendRequest, UpdateOutcome
from shared.protocol.topics import device_requests
from tests.edge.test_updater import (  # noqa: F401  (fixtures)
    V1,
    V2,
    Device,
    device,
    fleet,
    manifest_payload,
    snapshot,
    v1,
    v2,
)
from tests.helpers.release import NOW, Fleet


def command_payload(
    fleet: Fleet,
    *,
    key: SigningKey | None = None,
    certificate: object = None,
    **fields: object,
) -> bytes:
    """A CommandMessage for dev-a, signed by the coordinator unless told otherwise."""
    args: dict[str, object] = dict(
        action=CommandAction.ROLLBACK, device_id="dev-a", seq=1, issued_at=NOW - 1, expires=NOW + 60
    )
    args.update(fields)
    cmd = Command.model_validate(args)
    env = sign_command(
        cmd,
        key or fleet.coordinator,
        certificate=certificate or fleet.coordinator_cert,  # type: ignore[arg-type]
    )
    return encode_message(CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env))


@pytest.fixture()
def updated(device: Device, v2: Release) -> Device:
    """dev-a with v1 then v2 committed (v1 kept in the other slot)."""
    device.deliver(v2)
    assert device.last.outcome is UpdateOutcome.COMMITTED
    return device


def test_rollback_reactivates_previous_slot_and_keeps_the_floor(
    updated: Device, v1: Release, v2: Release
) -> None:
    v2_slot = updated.updater.state.active
    updated.updater.handle_command(command_payload(updated.fleet, seq=5, to_version=1))
    report = updated.last
    assert (report.outcome, report.version, report.active_version) == (
        UpdateOutcome.ROLLED_BACK,
        1,
        1,
    )
    state = updated.updater.state
    assert state.active is v2_slot.other and updated.serving.current == ("1", V1)
    assert state.floor == 2 and state.command_seq == 5  # the floor never goes down
    assert set(state.slots) == {Slot.A, Slot.B}  # v2 stays installed
    updated.restart()  # the rollback is committed
    assert updated.updater.active_model()[1] == "1" and updated.serving.current == ("1", V1)
    # The floor still refuses a replayed v2 manifest and an attacker's v1 manifest.
    for release, reason in ((v2, "replay"), (v1, "rollback")):
        updated.updater.handle_manifest(manifest_payload(updated.fleet, release))
        assert (updated.last.outcome, updated.last.reason) == (UpdateOutcome.FAILED, reason)
    assert updated.serving.current == ("1", V1)


def _forged(fleet: Fleet) -> bytes:
    evil = SigningKey.generate()
    return command_payload(fleet, key=evil, certificate=fleet.cert(evil, Role.COORDINATOR, by=evil))


def _unsigned(fleet: Fleet) -> bytes:
    """A well-formed envelope whose signature is all zeros."""
    env = decode_message_as(command_payload(fleet), CommandMessage).envelope
    env = env.model_copy(update={"sig": base64.b64encode(bytes(64)).decode()})
    return encode_message(CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env))


def _swapped(fleet: Fleet) -> bytes:
    """The signature of one command over another command's payload."""
    good = decode_message_as(command_payload(fleet), CommandMessage).envelope
    other = decode_message_as(command_payload(fleet, device_id="dev-b"), CommandMessage).envelope
    env = good.model_copy(update={"payload": other.payload, "sig": good.sig})
    return encode_message(CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env))


ATTACKS: dict[str, tuple[Callable[[Fleet], bytes], str]] = {
    "garbage": (lambda f: b'{"kind":"command"}', "bad_message"),
    "bad_signature_bytes": (_unsigned, "bad_signature"),
    "payload_swapped": (_swapped, "bad_signature"),
    "forged_key": (_forged, "untrusted_key"),
    "release_key": (
        lambda f: command_payload(f, key=f.release, certificate=f.release_cert),
        "untrusted_key",
    ),
    "expired": (
        lambda f: command_payload(f, issued_at=NOW - 120, expires=NOW - 60),
        "expired_command",
    ),
    "not_yet_valid": (
        lambda f: command_payload(f, issued_at=NOW + 60, expires=NOW + 120),
        "expired_command",
    ),
    "other_device": (lambda f: command_payload(f, device_id="dev-b"), "wrong_recipient"),
    "other_group": (
        lambda f: command_payload(f, device_id=None, group="garage"),
        "wrong_recipient",
    ),
    "replayed_seq": (lambda f: command_payload(f, seq=3), "replay"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_refused_command_changes_nothing(updated: Device, attack: str) -> None:
    make, reason = ATTACKS[attack]
    updated.updater.handle_command(command_payload(updated.fleet, seq=3, action="report_missing"))
    assert updated.updater.state.command_seq == 3  # accepted (nothing to report)
    before, serving = snapshot(updated.state_dir), updated.serving.current
    updated.updater.handle_command(make(updated.fleet))
    assert (updated.last.outcome, updated.last.reason) == (UpdateOutcome.COMMAND_FAILED, reason)
    assert snapshot(updated.state_dir) == before and updated.serving.current == serving
    assert updated.updater.state.command_seq == 3


def test_replay_refused_after_restart(updated: Device) -> None:
    payload = command_payload(updated.fleet, seq=7)
    updated.updater.handle_command(payload)
    assert updated.last.outcome is UpdateOutcome.ROLLED_BACK
    updated.restart()
    before = snapshot(updated.state_dir)
    updated.updater.handle_command(payload)  # the same signed command, captured and resent
    assert (updated.last.outcome, updated.last.reason) == (UpdateOutcome.COMMAND_FAILED, "replay")
    assert snapshot(updated.state_dir) == before and updated.serving.current == ("1", V1)


def test_group_command_for_a_joined_group(updated: Device) -> None:
    updated.updater.groups = frozenset({"kitchen"})
    updated.updater.handle_command(command_payload(updated.fleet, device_id=None, group="kitchen"))
    assert updated.last.outcome is UpdateOutcome.ROLLED_BACK


def test_rollback_without_previous_slot_is_refused(device: Device) -> None:
    serving = device.serving.current
    device.updater.handle_command(command_payload(device.fleet))
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "no_rollback_target",
    )
    assert device.updater.state.active_record.version == 1 and device.serving.current == serving
    assert device.updater.state.command_seq == 1  # the sequence is spent all the same


def test_rollback_to_an_unexpected_version_is_refused(updated: Device) -> None:
    before = updated.updater.state.active
    updated.updater.handle_command(command_payload(updated.fleet, to_version=7))
    assert updated.last.reason == "no_rollback_target"
    assert updated.updater.state.active is before and updated.serving.current == ("2", V2)


def test_rollback_to_a_tampered_slot_is_refused(updated: Device) -> None:
    other = updated.updater.state.active.other
    path = updated.state_dir / "slots" / f"{other.value}.tflite"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # R2
    updated.updater.handle_command(command_payload(updated.fleet))
    assert updated.last.reason == "hash_mismatch"
    assert updated.serving.current == ("2", V2) and updated.updater.active_model()[1] == "2"


def test_rollback_failing_probation_keeps_the_current_model(updated: Device) -> None:
    before = updated.updater.state.active
    updated.serving.fail.add("1")
    updated.updater.handle_command(command_payload(updated.fleet))
    assert (updated.last.outcome, updated.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "model_load_failed",  # the probation callback's own code
    )
    assert updated.updater.state.active is before and updated.serving.current == ("2", V2)
    updated.restart()
    assert updated.updater.active_model()[1] == "2"


def test_report_missing_sends_a_resend_request_now(device: Device, v2: Release) -> None:
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    for chunk in v2.chunks[1:]:
        device.updater.handle_chunk(encode_chunk(chunk))
    device.link.published.clear()
    device.updater.handle_command(
        command_payload(device.fleet, action="report_missing", artifact_id=v2.manifest.artifact_id)
    )
    [(topic, payload)] = device.link.published  # no quiet period
    assert topic == device_requests("dev-a")
    assert decode_message_as(payload, ResendRequest).missing == (0,)


def test_report_missing_without_a_download_is_refused(device: Device) -> None:
    device.updater.handle_command(command_payload(device.fleet, action="report_missing"))
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "not_downloading",
    )
    assert not device.link.published


def test_rollback_twice_toggles_between_committed_slots(updated: Device) -> None:
    updated.updater.handle_command(command_payload(updated.fleet, seq=1))
    updated.updater.handle_command(command_payload(updated.fleet, seq=2))
    assert updated.last.outcome is UpdateOutcome.ROLLED_BACK
    assert updated.serving.current == ("2", V2) and updated.updater.state.floor == 2
