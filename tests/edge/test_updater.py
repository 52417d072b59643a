"""The update engine without a broker: a fake link, a fake clock, a recording probation.

Every attack test asserts the reason code AND that nothing on disk changed (state, slots,
the model serving). Crash safety is tested by failing at every fsync/rename an update
performs (a simulated SIGKILL), then restarting the updater from disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.updater import Slot, UpdateReport
from shared.artifacts import (
    BaseArtifact,
    Encoding,
    Release,
    chunk_ad,
    unwrap_content_key,
)
from shared.crypto import SigningKey, encrypt
from shared.protocol.codec import decode_message_as, encode_chunk
from shared.protocol.messages import ResendRequest, UpdateOutcome
from tests.helpers.deltas import NEW_VERSION
from tests.helpers.release import NOW, Fleet, artifact
from tests.helpers.updater import (  # shared with tests/security/test_attacks.py
    Device,
    Serving,
    manifest_payload,
    snapshot,
)

V1 = artifact(30_000, seed=1)
V2 = artifact(40_000, seed=2)
CHUNK = 2048


@pytest.fixture()
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture()
def v1(fleet: Fleet) -> Release:
    return fleet.build(V1, 1, chunk_size=CHUNK)


@pytest.fixture()
def v2(fleet: Fleet) -> Release:
    return fleet.build(V2, 2, chunk_size=CHUNK)


@pytest.fixture()
def device(fleet: Fleet, v1: Release, tmp_path: Path) -> Device:
    """dev-a with v1 committed through the updater itself."""
    dev = Device(fleet, tmp_path / "state")
    dev.restart()
    dev.deliver(v1)
    assert dev.last.outcome is UpdateOutcome.COMMITTED
    return dev


def test_happy_path_commits_into_a_slot(fleet: Fleet, v1: Release, tmp_path: Path) -> None:
    dev = Device(fleet, tmp_path / "s")
    dev.restart()
    assert dev.updater.active_model() is None
    dev.deliver(v1)
    assert [r.outcome for r in dev.reports] == [UpdateOutcome.DOWNLOADING, UpdateOutcome.COMMITTED]
    assert dev.serving.current == ("1", V1)
    path, version = dev.updater.active_model()
    assert version == "1" and path.read_bytes() == V1
    assert dev.updater.state.floor == 1
    assert not list((tmp_path / "s" / "downloads").iterdir())  # download cleaned up
    assert not dev.link.subscriptions  # chunk topic dropped after commit


def test_second_version_goes_to_the_other_slot(device: Device, v2: Release) -> None:
    first = device.updater.state.active
    device.deliver(v2)
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert device.updater.state.active is first.other
    assert set(device.updater.state.slots) == {Slot.A, Slot.B}  # v1 kept for rollback
    assert device.serving.current == ("2", V2)


def test_a_save_cut_short_leaves_no_temporary_after_a_restart(device: Device) -> None:
    """A crash between writing ``.state.json.tmp`` (or the timings') and the rename leaves
    the old file in force and the temporary behind: the restart removes it (F1), and
    touches nothing else in the state directory."""
    before = snapshot(device.state_dir)
    stray = [device.state_dir / ".state.json.tmp", device.state_dir / ".variants.json.tmp"]
    for path in stray:
        path.write_bytes(b'{"half": ')
    keep = device.state_dir / ".other.tmp"  # not the updater's: left alone
    keep.write_bytes(b"x")
    device.restart()
    assert not any(path.exists() for path in stray)
    assert keep.exists()
    keep.unlink()
    assert snapshot(device.state_dir) == before


def test_retained_manifest_of_installed_version_is_up_to_date(device: Device, v1: Release) -> None:
    before, loads = snapshot(device.state_dir), device.serving.loads
    device.updater.handle_manifest(manifest_payload(device.fleet, v1))
    assert device.last.outcome is UpdateOutcome.UP_TO_DATE
    assert device.serving.loads == loads and snapshot(device.state_dir) == before


def test_chunks_out_of_order_and_duplicated(device: Device, v2: Release) -> None:
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    chunks = list(v2.chunks) * 2
    random.Random(4).shuffle(chunks)
    loads = device.serving.loads
    for chunk in chunks:
        device.updater.handle_chunk(encode_chunk(chunk))
    assert device.serving.loads == loads + 1  # installed exactly once
    assert device.serving.current == ("2", V2)


def test_resume_after_restart_asks_only_for_missing(device: Device, v2: Release) -> None:
    assert v2.manifest.chunk_count >= 4
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    for chunk in v2.chunks[::2]:
        device.updater.handle_chunk(encode_chunk(chunk))
    held = set(range(0, v2.manifest.chunk_count, 2))
    device.restart()  # the agent restarted: no manifest re-delivery needed
    expected = tuple(i for i in range(v2.manifest.chunk_count) if i not in held)
    assert device.updater.missing() == expected
    device.updater.tick()
    topic, payload = device.link.published[-1]
    assert topic == "fedge/v1/devices/dev-a/requests"
    request = decode_message_as(payload, ResendRequest)
    assert request.missing == expected and request.artifact_id == v2.manifest.artifact_id
    for i in expected:
        device.updater.handle_chunk(encode_chunk(v2.chunks[i]))
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert device.serving.current == ("2", V2)


def test_resend_waits_for_the_quiet_period(device: Device, v2: Release) -> None:
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    device.updater.handle_chunk(encode_chunk(v2.chunks[0]))
    device.updater.tick()
    assert not device.link.published  # still within quiet_s of the last chunk
    device.clock[0] += 2.5
    device.updater.tick()
    assert len(device.link.published) == 1


def test_due_in_says_when_tick_has_work(device: Device, v2: Release) -> None:
    """The owner may sleep exactly until the next resend check, and forever when idle."""
    assert device.updater.due_in() is None  # nothing downloading
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    device.updater.handle_chunk(encode_chunk(v2.chunks[0]))
    due = device.updater.due_in()
    assert due is not None and 0 < due <= 2.0  # quiet_s after the last new chunk
    device.clock[0] += due - 0.01
    device.updater.tick()
    assert not device.link.published  # not yet
    device.clock[0] += 0.02
    assert device.updater.due_in() == 0.0
    device.updater.tick()
    assert len(device.link.published) == 1  # the resend request
    assert device.updater.due_in() is not None and device.updater.due_in() > 0  # backoff


def test_probation_failure_reverts_and_keeps_old_model(device: Device, v2: Release) -> None:
    before = snapshot(device.state_dir)
    device.serving.fail.add("2")
    device.deliver(v2)
    assert device.last.outcome is UpdateOutcome.FAILED
    assert device.last.reason == "model_load_failed"
    assert device.serving.current == ("1", V1)
    # The rollback target's record was given up for the candidate; the committed slot is
    # byte-identical and the floor did not rise.
    assert device.updater.state.floor == 1
    active = device.updater.state.active
    assert snapshot(device.state_dir)[f"{active}.tflite"] == before[f"{active}.tflite"]
    assert not (device.state_dir / "slots" / f"{active.other}.tflite").exists()
    assert device.restart().active_model()[1] == "1"


# --- attacks: each refused before any slot write, nothing changed ------------------------


def _forged_chunk(fleet: Fleet, release: Release) -> bytes:
    """Chunk 0 re-encrypted by another recipient: right length, valid GCM tag, wrong hash."""
    m = release.manifest
    key = unwrap_content_key(m, "dev-b", fleet.devices["dev-b"])
    plain = os.urandom(m.chunk_plain_length(0))
    body = encrypt(key, plain, chunk_ad(m.artifact_id, 0, m.chunk_count))
    forged = release.chunks[0].__class__(m.artifact_id, 0, m.chunk_count, body)
    return encode_chunk(forged)


Attack = Callable[[Device, Fleet, Release, Release], None]


def _rollback(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.deliver(v1)  # with v2 installed (floor 2): the old, validly signed v1 again


def _replay(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.deliver(fleet.build(V2, 1, chunk_size=CHUNK))  # same version, other artifact


def _expired(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.clock[0] = NOW + 3600
    dev.deliver(v2)


def _wrong_hw(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.deliver(fleet.build(V2, 2, chunk_size=CHUNK, hardware_ids=["hw-other"]))


def _tampered_manifest(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    env = fleet.sign(v2.manifest.for_devices(["dev-a"]))
    evil = v2.manifest.for_devices(["dev-a"]).model_copy(update={"length": 1})
    dev.deliver(v2, env.model_copy(update={"payload": fleet.sign(evil).payload}))


def _untrusted_key(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    rogue = SigningKey.generate()
    cert = fleet.cert(rogue, by=SigningKey.generate())
    dev.deliver(v2, fleet.sign(v2.manifest.for_devices(["dev-a"]), rogue, cert))


def _oversized(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.max_model_bytes = len(V2) - 1
    dev.restart()
    dev.deliver(v2)


def _wrong_recipient(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.deliver(v2, fleet.sign(v2.manifest.for_devices(["dev-b"])))


def _tampered_chunk(dev: Device, fleet: Fleet, v1: Release, v2: Release) -> None:
    dev.updater.handle_manifest(manifest_payload(fleet, v2))
    dev.updater.handle_chunk(_forged_chunk(fleet, v2))


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        (_rollback, "rollback"),
        (_replay, "replay"),
        (_expired, "expired_manifest"),
        (_wrong_hw, "wrong_hardware"),
        (_tampered_manifest, "bad_signature"),
        (_untrusted_key, "untrusted_key"),
        (_oversized, "model_too_large"),
        (_wrong_recipient, "wrong_recipient"),
        (_tampered_chunk, "hash_mismatch"),
    ],
)
def test_attack_refused_and_nothing_changed(
    device: Device, fleet: Fleet, v1: Release, v2: Release, attack: Attack, code: str
) -> None:
    if attack is _rollback:  # the baseline for a rollback is v2 installed
        device.deliver(v2)
    before, serving = snapshot(device.state_dir), device.serving.current
    reports = len(device.reports)
    attack(device, fleet, v1, v2)
    assert code in [r.reason for r in device.reports[reports:]]
    assert snapshot(device.state_dir) == before
    assert device.serving.current == serving
    assert device.restart().active_model()[1] == serving[0]


def test_tampered_chunk_does_not_stop_the_genuine_download(device: Device, v2: Release) -> None:
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    device.updater.handle_chunk(_forged_chunk(device.fleet, v2))
    assert device.last.outcome is UpdateOutcome.CHUNK_REJECTED
    assert 0 in device.updater.missing()
    for chunk in v2.chunks:
        device.updater.handle_chunk(encode_chunk(chunk))
    assert device.serving.current == ("2", V2)


def test_corrupted_stored_chunk_is_fetched_again(device: Device, v2: Release) -> None:
    device.updater.handle_manifest(manifest_payload(device.fleet, v2))
    for chunk in v2.chunks[:3]:
        device.updater.handle_chunk(encode_chunk(chunk))
    stored = device.state_dir / "downloads" / v2.manifest.artifact_id / "chunk-0001.bin"
    stored.write_bytes(b"\0" * len(stored.read_bytes()))  # bit rot on disk
    device.restart()
    assert device.updater.missing()[0] == 1


# --- crash safety ------------------------------------------------------------------------


class Crash(BaseException):
    """A simulated SIGKILL: not an Exception, so no handler in the updater catches it."""


@dataclass
class CrashAt:
    """Fails the ``at``-th write/fsync/rename, leaving the files as a power cut would.

    A crash in a write leaves half the data written (download files are never flushed,
    so that is what a power cut can leave of them); an fsync crash first drops the
    unsynced data.
    """

    at: int
    seen: int = 0

    def _step(self) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise Crash

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_fsync, real_replace, real_write = os.fsync, os.replace, os.write

        def write(fd: int, data: Any) -> int:
            if self.seen + 1 == self.at:
                real_write(fd, bytes(data)[: len(data) // 2])  # torn
            self._step()
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if self.seen + 1 == self.at:
                # Torn write: the page cache never reached the disk (no-op on a directory).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, os.fstat(fd).st_size // 2)
            self._step()
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            self._step()
            real_replace(src, dst)

        mp.setattr(os, "fsync", fsync)
        mp.setattr(os, "replace", replace)
        mp.setattr(os, "write", write)


@pytest.fixture()
def crash_template(device: Device, tmp_path: Path) -> Path:
    """A state directory with v1 committed, copied for each crash run."""
    template = tmp_path / "template"
    shutil.copytree(device.state_dir, template)
    return template


def _count_steps(fleet: Fleet, template: Path, v2: Release, tmp_path: Path) -> int:
    dev = Device(fleet, tmp_path / "count")
    shutil.copytree(template, dev.state_dir)
    dev.restart()
    counter = CrashAt(at=0)
    with pytest.MonkeyPatch.context() as mp:
        counter.install(mp)
        dev.deliver(v2)
    assert dev.last.outcome is UpdateOutcome.COMMITTED
    return counter.seen


def test_crash_at_every_step_recovers_to_a_committed_model(
    fleet: Fleet, crash_template: Path, tmp_path: Path
) -> None:
    v2 = fleet.build(V2, 2, chunk_size=CHUNK // 4)  # more chunks, more crash points
    steps = _count_steps(fleet, crash_template, v2, tmp_path)
    assert steps >= 20  # manifest, every chunk, slot and state each take several steps
    outcomes: set[str] = set()
    for at in [*range(1, steps + 1), -1]:  # -1: killed inside probation
        dev = Device(fleet, tmp_path / f"crash{at}")
        shutil.copytree(crash_template, dev.state_dir)
        if at == -1:
            dev.serving = _CrashingServing()
        dev.restart()
        with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
            CrashAt(at).install(mp)
            dev.deliver(v2)
        dev.serving = Serving()
        updater = dev.restart()  # the agent comes back from disk
        path, version = updater.active_model()
        data = path.read_bytes()
        record = updater.state.active_record
        assert record is not None and record.matches(data)
        assert (version, data) in (("1", V1), ("2", V2))
        assert updater.state.floor == int(version)
        assert not list(dev.state_dir.rglob(".*.tmp"))
        outcomes.add(version)
        dev.deliver(v2)  # the retained manifest and the chunks come again
        assert dev.updater.active_model()[1] == "2"
        assert dev.updater.active_model()[0].read_bytes() == V2
    assert outcomes == {"1", "2"}  # crashes both before and after the commit point


class _CrashingServing(Serving):
    def __call__(self, path: Path, version: str) -> None:
        raise Crash


@pytest.mark.parametrize("encoding", list(NEW_VERSION), ids=str)
def test_delta_update_applies_to_the_installed_model(
    fleet: Fleet, device: Device, encoding: Encoding
) -> None:
    new = NEW_VERSION[encoding](V1)  # a fine-tuning change of the installed v1
    release = fleet.build(new, 2, chunk_size=CHUNK, base=BaseArtifact(1, V1))
    assert release.manifest.encoding is encoding
    device.deliver(release)
    assert device.last.outcome is UpdateOutcome.COMMITTED
    assert device.serving.current == ("2", new)
    assert hashlib.sha256(device.updater.active_model()[0].read_bytes()).hexdigest() == (
        release.manifest.sha256
    )
    assert device.restart().active_model()[1] == "2"


@pytest.mark.parametrize("encoding", list(NEW_VERSION), ids=str)
def test_delta_against_another_base_is_refused_and_old_model_keeps_serving(
    fleet: Fleet, device: Device, encoding: Encoding
) -> None:
    other = artifact(len(V1), seed=7)  # same length as the installed v1, other bytes
    release = fleet.build(
        NEW_VERSION[encoding](other), 2, chunk_size=CHUNK, base=BaseArtifact(1, other)
    )
    assert release.manifest.encoding is encoding
    before = snapshot(device.state_dir)
    device.deliver(release)
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.FAILED,
        "delta_base_mismatch",
    )
    assert snapshot(device.state_dir) == before
    assert device.serving.current == ("1", V1)
    assert device.updater.state.floor == 1
    assert device.restart().active_model()[1] == "1"


# --- what the device serves (SlotRecord.artifact_id / precision, Updater.serving) --------


def test_serving_names_the_installed_artifact(fleet: Fleet, v1: Release, tmp_path: Path) -> None:
    dev = Device(fleet, tmp_path / "s")
    dev.restart()
    assert dev.updater.serving() == (None, None)  # nothing committed yet
    dev.deliver(v1)
    record, slot = dev.updater.serving()
    m = v1.manifest
    assert slot is dev.updater.state.active and slot is not None
    assert (record.model_id, record.version, record.artifact_id) == (
        m.model_id,
        m.version,
        m.artifact_id,
    )
    assert (record.sha256, record.length, record.precision) == (m.sha256, m.length, m.precision)
    assert dev.restart().serving() == (record, slot)  # persisted in state.json


def test_serving_follows_an_update_and_a_rollback(device: Device, v1: Release, v2: Release) -> None:
    from tests.edge.test_updater_commands import command_payload

    device.deliver(v2)
    record, slot = device.updater.serving()
    assert (record.version, record.artifact_id) == (2, v2.manifest.artifact_id)
    device.updater.handle_command(command_payload(device.fleet, seq=1))
    assert device.last.outcome is UpdateOutcome.ROLLED_BACK
    record, back = device.updater.serving()
    assert back is slot.other and (record.version, record.artifact_id) == (
        1,
        v1.manifest.artifact_id,
    )


def test_state_json_of_an_older_version_still_loads(fleet: Fleet, tmp_path: Path) -> None:
    """A ``state.json`` written before artifact_id/precision/expired_downloads existed."""
    state_dir = tmp_path / "old"
    (state_dir / "slots").mkdir(parents=True)
    (state_dir / "slots" / "a.tflite").write_bytes(V1)
    old = {
        "active": "a",
        "slots": {
            "a": {
                "version": 1,
                "sha256": hashlib.sha256(V1).hexdigest(),
                "length": len(V1),
                "model_id": "kws",
            }
        },
        "floor": 1,
        "command_seq": 4,
    }
    (state_dir / "state.json").write_text(json.dumps(old))
    dev = Device(fleet, state_dir)
    dev.restart()
    record, slot = dev.updater.serving()
    assert slot is Slot.A and (record.version, record.model_id) == (1, "kws")
    assert (record.artifact_id, record.precision) == (None, None)
    state = dev.updater.state
    assert (state.floor, state.command_seq, state.expired_downloads) == (1, 4, ())
    assert dev.updater.active_model()[1] == "1" and dev.serving.current == ("1", V1)
    # The next install records the new fields; the old record is unchanged beside it.
    v2 = fleet.build(V2, 2, chunk_size=CHUNK)
    dev.deliver(v2)
    record, _ = dev.updater.serving()
    assert (record.artifact_id, record.precision) == (v2.manifest.artifact_id, "int8")
    assert dev.updater.state.slots[Slot.A].artifact_id is None


class BrokenSink(list[UpdateReport]):
    """A status callback that always fails (the agent's status publishing broke)."""

    def append(self, report: UpdateReport) -> None:
        raise RuntimeError("status sink down")


def test_failing_status_callback_never_breaks_an_install(
    fleet: Fleet, v1: Release, tmp_path: Path
) -> None:
    dev = Device(fleet, tmp_path / "s", reports=BrokenSink())
    dev.restart()
    dev.deliver(v1)
    assert dev.serving.current == ("1", V1) and dev.updater.state.floor == 1
    assert dev.updater.serving()[0].artifact_id == v1.manifest.artifact_id


def test_a_chunk_whose_header_index_differs_from_its_topic_is_rejected(
    fleet: Fleet, v1: Release, tmp_path: Path
) -> None:
    """C4: topic index vs header index — refused as chunk_rejected, the download goes on."""
    from edge.updater.routing import dispatch
    from shared.protocol import topics as t

    dev = Device(fleet, tmp_path / "s")
    dev.restart()
    dev.updater.handle_manifest(manifest_payload(fleet, v1))
    m = v1.manifest
    assert m.chunk_count >= 2
    wrong_topic = t.artifact_chunk(m.artifact_id, 1)  # chunk 0's bytes on chunk 1's topic
    dispatch(dev.updater, wrong_topic, encode_chunk(v1.chunks[0]), device_id="dev-a", groups=())
    assert (dev.last.outcome, dev.last.reason) == (UpdateOutcome.CHUNK_REJECTED, "bad_message")
    assert 0 in dev.updater.missing()  # not stored
    for chunk in v1.chunks:  # the genuine chunks on their own topics still complete it
        topic = t.artifact_chunk(m.artifact_id, chunk.index)
        dispatch(dev.updater, topic, encode_chunk(chunk), device_id="dev-a", groups=())
    assert dev.last.outcome is UpdateOutcome.COMMITTED
    assert dev.serving.current == ("1", V1)
