"""Manifest purposes on the device (``docs/protocol.md`` §15, rules U1-U3), no broker.

A ``trial`` is verified exactly like an install, timed through ``on_trial`` and deleted: it
never writes a slot, never moves the floor and never changes ``state.json``. A ``shadow``
is held in the inactive slot without activation or commit; a later ``install`` of the same
artifact installs from that slot without downloading. Each test asserts the outcome AND the
state on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.status import build_status
from edge.updater import Slot, Updater
from shared.artifacts import Manifest, Purpose, Release
from shared.crypto import SigningKey
from shared.errors import ModelLoadError
from shared.protocol.codec import encode_chunk, encode_message
from shared.protocol.commands import Command, CommandAction, sign_command
from shared.protocol.messages import (
    CommandMessage,
    DeviceState,
    UpdateOutcome,
    VariantTiming,
)
from shared.protocol.topics import artifact_chunks
from tests.helpers.release import HW, NOW, Fleet, artifact
from tests.helpers.updater import Device, manifest_payload, snapshot

V1 = artifact(30_000, seed=1)
V2 = artifact(40_000, seed=2)
V3 = artifact(35_000, seed=3)
CHUNK = 2048


@dataclass
class Timer:
    """Stands in for ``edge.inference.timing``: records the file it was given."""

    median_us: float = 40.0
    fail: bool = False
    seen: list[tuple[bytes, Manifest]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def __call__(self, path: Path, manifest: Manifest) -> VariantTiming:
        self.seen.append((path.read_bytes(), manifest))
        self.paths.append(path)
        if self.fail:
            raise ModelLoadError("cannot run here")
        return VariantTiming(
            model_id="someone-else",  # replaced by the manifest's identity
            version=99,
            artifact_id="0" * 32,
            precision=manifest.precision,
            threads=1,
            runs=50,
            median_us=self.median_us,
            p99_us=self.median_us * 1.5,
        )


@dataclass
class Shadows:
    """Records every ``on_shadow`` call: ``(bytes at path, artifact id)`` or ``None``."""

    calls: list[tuple[bytes, str] | None] = field(default_factory=list)

    def __call__(self, path: Path | None, manifest: Manifest | None) -> None:
        if path is None or manifest is None:
            self.calls.append(None)
        else:
            self.calls.append((path.read_bytes(), manifest.artifact_id))


@dataclass
class PurposeDevice(Device):
    """The shared test device, with the purpose callbacks wired in."""

    timer: Timer | None = field(default_factory=Timer)
    shadows: Shadows = field(default_factory=Shadows)

    def restart(self) -> Updater:
        self.updater = Updater(
            device_id="dev-a",
            hardware_id=HW,
            box_key=self.fleet.devices["dev-a"],
            trust=self.fleet.trust(),
            max_model_bytes=self.max_model_bytes,
            precisions=("int8", "float32"),
            state_dir=self.state_dir,
            link=self.link,
            activate=self.serving,
            on_status=self.reports.append,
            now=lambda: self.clock[0],
            quiet_s=2.0,
            on_trial=self.timer,
            on_shadow=self.shadows,
        )
        active = self.updater.active_model()
        self.serving.current = (active[1], active[0].read_bytes()) if active else None
        return self.updater


@pytest.fixture()
def fleet() -> Fleet:
    return Fleet()


def build(fleet: Fleet, data: bytes, version: int, purpose: Purpose) -> Release:
    return fleet.build(data, version, chunk_size=CHUNK, purpose=purpose)


@pytest.fixture()
def device(fleet: Fleet, tmp_path: Path) -> PurposeDevice:
    """dev-a with v1 committed."""
    dev = PurposeDevice(fleet, tmp_path / "state")
    dev.restart()
    dev.deliver(build(fleet, V1, 1, Purpose.INSTALL))
    assert dev.last.outcome is UpdateOutcome.COMMITTED
    return dev


def files(state_dir: Path) -> set[str]:
    return {str(p.relative_to(state_dir)) for p in state_dir.rglob("*") if p.is_file()}


# --- trial (U1) ---------------------------------------------------------------------------


def test_trial_is_timed_reported_and_leaves_committed_state_byte_identical(
    device: PurposeDevice,
) -> None:
    before, loads = snapshot(device.state_dir), device.serving.loads
    trial = build(device.fleet, V2, 2, Purpose.TRIAL)
    device.deliver(trial)
    assert device.last.outcome is UpdateOutcome.TRIALED
    assert device.last.artifact_id == trial.manifest.artifact_id
    assert snapshot(device.state_dir) == before  # state.json and both slots untouched
    assert device.updater.state.floor == 1 and device.serving.loads == loads
    assert device.serving.current == ("1", V1)
    assert device.timer is not None and device.timer.seen[0][0] == V2  # timed the real bytes
    assert not device.timer.paths[0].exists()  # deleted after timing
    assert files(device.state_dir) == {"state.json", "slots/a.tflite", "variants.json"}
    (timing,) = device.updater.timings
    m = trial.manifest
    assert (timing.model_id, timing.version, timing.artifact_id, timing.precision) == (
        m.model_id,
        m.version,
        m.artifact_id,
        m.precision,
    )
    status = build_status(
        device_id="dev-a",
        hardware_id=HW,
        state=DeviceState.ONLINE,
        sent_at=NOW,
        updater_state=device.updater.state,
        timings=device.updater.timings,
        cpu_features=["AVX2", "fma", "bad flag"],
    )
    assert status.variants is not None
    assert status.variants.timings == (timing,) and status.variants.cpu_features == ("avx2", "fma")
    assert status.serving is not None and status.serving.version == 1


def test_trial_then_install_of_the_same_version(device: PurposeDevice) -> None:
    """A trial's version need only be above the floor: the install may reuse it."""
    device.deliver(build(device.fleet, V2, 2, Purpose.TRIAL))
    device.deliver(build(device.fleet, V2, 2, Purpose.INSTALL))
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert device.serving.current == ("2", V2) and device.updater.state.floor == 2


def test_trial_redelivered_is_not_downloaded_again(device: PurposeDevice) -> None:
    trial = build(device.fleet, V2, 2, Purpose.TRIAL)
    device.deliver(trial)
    device.restart()  # a reconnect redelivers the retained manifest
    device.updater.handle_manifest(manifest_payload(device.fleet, trial))
    assert device.last.outcome is UpdateOutcome.TRIALED
    assert artifact_chunks(trial.manifest.artifact_id) not in device.link.subscriptions
    assert device.timer is not None and len(device.timer.seen) == 1
    assert len(device.updater.timings) == 1  # persisted in variants.json


def test_trial_without_on_trial_is_refused_before_download(fleet: Fleet, tmp_path: Path) -> None:
    dev = PurposeDevice(fleet, tmp_path / "s", timer=None)
    dev.restart()
    dev.deliver(build(fleet, V1, 1, Purpose.INSTALL))
    before = snapshot(dev.state_dir)
    trial = build(fleet, V2, 2, Purpose.TRIAL)
    reports = len(dev.reports)
    dev.updater.handle_manifest(manifest_payload(fleet, trial))  # the manifest alone
    assert [r.outcome for r in dev.reports[reports:]] == [UpdateOutcome.FAILED]  # no download
    assert (dev.last.outcome, dev.last.reason) == (UpdateOutcome.FAILED, "trial_not_supported")
    assert dev.last.artifact_id == trial.manifest.artifact_id
    assert not dev.link.subscriptions and snapshot(dev.state_dir) == before
    assert dev.updater.timings == ()


def test_trial_with_a_tampered_chunk_is_refused_like_an_install(device: PurposeDevice) -> None:
    before = snapshot(device.state_dir)
    outcomes = []
    for purpose in (Purpose.TRIAL, Purpose.INSTALL):
        release = build(device.fleet, V2, 2, purpose)
        device.updater.handle_manifest(manifest_payload(device.fleet, release))
        first = release.chunks[0]
        tampered = type(first)(
            first.artifact_id, first.index, first.count, b"\x00" + first.body[1:]
        )
        device.updater.handle_chunk(encode_chunk(tampered))
        outcomes.append((device.last.outcome, device.last.reason))
    assert outcomes[0] == outcomes[1] == (UpdateOutcome.CHUNK_REJECTED, "hash_mismatch")
    assert device.timer is not None and not device.timer.seen  # never reached the timer
    assert snapshot(device.state_dir) == before


def test_trial_at_or_below_the_floor_is_a_replay(device: PurposeDevice) -> None:
    before = snapshot(device.state_dir)
    device.deliver(build(device.fleet, V2, 1, Purpose.TRIAL))
    assert (device.last.outcome, device.last.reason) == (UpdateOutcome.FAILED, "replay")
    assert device.timer is not None and not device.timer.seen
    assert snapshot(device.state_dir) == before


def test_trial_that_cannot_run_is_reported_and_deleted(device: PurposeDevice) -> None:
    assert device.timer is not None
    device.timer.fail = True
    before = snapshot(device.state_dir)
    device.deliver(build(device.fleet, V2, 2, Purpose.TRIAL))
    assert (device.last.outcome, device.last.reason) == (UpdateOutcome.FAILED, "model_load_failed")
    assert not device.timer.paths[0].exists() and device.updater.timings == ()
    assert snapshot(device.state_dir) == before


# --- shadow (U2) and install of the held candidate (U3) ------------------------------------


def test_shadow_is_held_in_the_inactive_slot_never_activated(device: PurposeDevice) -> None:
    loads, floor = device.serving.loads, device.updater.state.floor
    shadow = build(device.fleet, V2, 2, Purpose.SHADOW)
    device.deliver(shadow)
    assert device.last.outcome is UpdateOutcome.HELD
    state = device.updater.state
    assert state.active is Slot.A and state.floor == floor == 1
    assert state.candidate is not None and state.candidate.slot is Slot.B
    assert Slot.B not in state.slots  # not committed, not a rollback target
    assert (device.state_dir / "slots" / "b.tflite").read_bytes() == V2
    assert device.serving.loads == loads and device.serving.current == ("1", V1)
    assert device.shadows.calls == [(V2, shadow.manifest.artifact_id)]
    status = build_status(
        device_id="dev-a",
        hardware_id=HW,
        state=DeviceState.ONLINE,
        sent_at=NOW,
        updater_state=state,
    )
    assert status.candidate is not None and status.serving is not None
    assert (status.candidate.artifact_id, status.candidate.slot) == (
        shadow.manifest.artifact_id,
        "b",
    )
    assert status.serving.version == 1


def test_install_of_the_held_candidate_needs_no_download(device: PurposeDevice) -> None:
    shadow = build(device.fleet, V2, 2, Purpose.SHADOW)
    device.deliver(shadow)
    # The coordinator promotes the candidate: the same release re-signed as an install.
    install = Release(shadow.manifest.model_copy(update={"purpose": Purpose.INSTALL}), ())
    device.updater.handle_manifest(manifest_payload(device.fleet, install))
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert not device.link.subscriptions  # nothing was downloaded
    state = device.updater.state
    assert state.active is Slot.B and state.floor == 2 and state.candidate is None
    assert device.serving.current == ("2", V2)
    assert device.shadows.calls[-1] is None  # the shadow evaluator is told it is gone


def test_install_of_a_corrupted_candidate_downloads_it(device: PurposeDevice) -> None:
    shadow = build(device.fleet, V2, 2, Purpose.SHADOW)
    device.deliver(shadow)
    (device.state_dir / "slots" / "b.tflite").write_bytes(b"rotten")
    install = Release(shadow.manifest.model_copy(update={"purpose": Purpose.INSTALL}), ())
    device.updater.handle_manifest(manifest_payload(device.fleet, install))
    assert device.updater.state.candidate is None and device.shadows.calls[-1] is None
    assert artifact_chunks(shadow.manifest.artifact_id) in device.link.subscriptions
    for chunk in shadow.chunks:  # the coordinator resends them (same artifact, same key)
        device.updater.handle_chunk(encode_chunk(chunk))
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert device.serving.current == ("2", V2) and device.updater.state.floor == 2


def test_newer_shadow_or_install_replaces_the_candidate(device: PurposeDevice) -> None:
    first = build(device.fleet, V2, 2, Purpose.SHADOW)
    device.deliver(first)
    second = build(device.fleet, V3, 3, Purpose.SHADOW)
    device.deliver(second)
    held = device.updater.state.candidate
    assert held is not None and held.record.artifact_id == second.manifest.artifact_id
    assert (device.state_dir / "slots" / "b.tflite").read_bytes() == V3
    device.deliver(build(device.fleet, V2, 4, Purpose.INSTALL))  # another artifact
    state = device.updater.state
    assert device.last.outcome is UpdateOutcome.COMMITTED and state.candidate is None
    assert state.active is Slot.B and device.serving.current == ("4", V2)
    assert device.shadows.calls[-1] is None


def test_candidate_survives_a_restart_and_is_reannounced(device: PurposeDevice) -> None:
    shadow = build(device.fleet, V2, 2, Purpose.SHADOW)
    device.deliver(shadow)
    before = snapshot(device.state_dir)
    device.shadows.calls.clear()
    device.restart()
    assert snapshot(device.state_dir) == before
    assert device.shadows.calls == [(V2, shadow.manifest.artifact_id)]
    device.updater.handle_manifest(manifest_payload(device.fleet, shadow))  # retained again
    assert device.last.outcome is UpdateOutcome.HELD and not device.link.subscriptions


def test_damaged_candidate_is_dropped_at_restart(device: PurposeDevice) -> None:
    device.deliver(build(device.fleet, V2, 2, Purpose.SHADOW))
    (device.state_dir / "slots" / "b.tflite").write_bytes(b"torn")
    device.shadows.calls.clear()
    device.restart()
    state = device.updater.state
    assert state.candidate is None and state.active is Slot.A and state.floor == 1
    assert not (device.state_dir / "slots" / "b.tflite").exists()
    assert device.shadows.calls == [] and device.serving.current == ("1", V1)


def _rollback(fleet: Fleet, key: SigningKey | None = None) -> bytes:
    cmd = Command(
        action=CommandAction.ROLLBACK,
        device_id="dev-a",
        seq=1,
        issued_at=NOW - 1,
        expires=NOW + 60,
    )
    env = sign_command(cmd, key or fleet.coordinator, certificate=fleet.coordinator_cert)
    return encode_message(CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env))


def test_rollback_while_a_candidate_is_held_changes_nothing(device: PurposeDevice) -> None:
    device.deliver(build(device.fleet, V2, 2, Purpose.INSTALL))  # v1 now the rollback target
    device.deliver(build(device.fleet, V3, 3, Purpose.SHADOW))  # replaces v1's slot
    slots_before = {p.name: p.read_bytes() for p in (device.state_dir / "slots").iterdir()}
    device.updater.handle_command(_rollback(device.fleet))
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "no_rollback_target",
    )
    state = device.updater.state
    assert state.candidate is not None and state.active is Slot.B and state.floor == 2
    assert {p.name: p.read_bytes() for p in (device.state_dir / "slots").iterdir()} == slots_before
    assert device.serving.current == ("2", V2)


def test_a_fresh_install_release_of_the_candidate_file_is_installed_from_the_slot(
    device: PurposeDevice,
) -> None:
    """The coordinator promotes a candidate with a new release of the same file (U3)."""
    device.deliver(build(device.fleet, V2, 2, Purpose.SHADOW))
    fresh = build(device.fleet, V2, 2, Purpose.INSTALL)  # another artifact id and key
    device.updater.handle_manifest(manifest_payload(device.fleet, fresh))
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert artifact_chunks(fresh.manifest.artifact_id) not in device.link.subscriptions
    assert device.serving.current == ("2", V2) and device.updater.state.candidate is None
