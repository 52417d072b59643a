# ruff: noqa: F811  (pytest fixtures imported from tests.edge.test_updater)
"""Rules T6 (a verified revocation list applies at once) and D2 (downloads expire).

Run against the real :class:`~edge.updater.Updater` with a fake link and an injected clock
(no sleeping). Every attack asserts the refusal reason AND that nothing changed: the old
model still serves, the floor and the command ``seq`` are where they were, ``state.json``
and the slots are byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts import Envelope, Release, RevocationList, sign_revocations
from shared.crypto import SigningKey
from shared.errors import ConfigError
from shared.protocol.codec import decode_message_as, encode_chunk
from shared.protocol.messages import ResendRequest, UpdateOutcome
from shared.protocol.topics import artifact_chunks
from tests.edge.test_updater import (  # noqa: F401  (fixtures)
    CHUNK,
    V1,
    V2,
    BrokenSink,
    Device,
    device,
    fleet,
    manifest_payload,
    snapshot,
    v1,
    v2,
)
from tests.edge.test_updater_commands import command_payload
from tests.helpers.release import NOW, Fleet, artifact

V3 = artifact(35_000, seed=3)
TIMEOUT = 600.0


def revocations(fleet: Fleet, *revoked: SigningKey, version: int = 2) -> Envelope:
    """A root-signed revocation list naming ``revoked``."""
    listed = tuple(k.verify_key.key_id for k in revoked)
    return sign_revocations(
        fleet.root, RevocationList(version=version, issued_at=NOW, revoked_key_ids=listed)
    )


def carrying(
    fleet: Fleet,
    release: Release,
    revs: Envelope | None,
    key: SigningKey | None = None,
    cert: Envelope | None = None,
) -> bytes:
    """The ManifestMessage of ``release`` for dev-a, with ``revs`` riding along."""
    env = fleet.sign(release.manifest.for_devices(["dev-a"]), key, cert)
    return manifest_payload(fleet, release, env.model_copy(update={"revocations": revs}))


def _report_missing(fleet: Fleet, release: Release, seq: int = 10) -> bytes:
    """A coordinator-signed ``report_missing`` for ``release``'s download."""
    return command_payload(
        fleet, action="report_missing", artifact_id=release.manifest.artifact_id, seq=seq
    )


def _outcome(dev: Device) -> tuple[UpdateOutcome, str | None]:
    """The last report's outcome and reason."""
    return dev.last.outcome, dev.last.reason


def _unchanged(dev: Device, before: dict[str, bytes], *, seq: int, floor: int = 1) -> None:
    assert snapshot(dev.state_dir) == before
    assert dev.serving.current == ("1", V1)
    assert (dev.updater.state.floor, dev.updater.state.command_seq) == (floor, seq)


# --- T6: a verified revocation list applies at once ----------------------------------


def test_revoked_coordinator_key_refused_while_the_download_stalls(
    device: Device, fleet: Fleet, v2: Release, tmp_path: Path
) -> None:
    cmd = _report_missing(fleet, v2)
    # Positive control: a device that never saw the list accepts this very command.
    twin = Device(fleet, tmp_path / "twin")
    twin.restart()
    twin.updater.handle_manifest(carrying(fleet, v2, None))
    twin.updater.handle_command(cmd)
    assert twin.updater.state.command_seq == 10
    [(_, request)] = twin.link.published
    assert decode_message_as(request, ResendRequest).artifact_id == v2.manifest.artifact_id

    revs = revocations(fleet, fleet.coordinator)
    device.updater.handle_manifest(carrying(fleet, v2, revs))
    assert device.last.outcome is UpdateOutcome.DOWNLOADING  # stalled: no chunk comes
    assert device.updater.state.revocations == revs  # persisted at once (S2)
    before = snapshot(device.state_dir)
    device.updater.handle_command(cmd)
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "revoked_key",
    )
    _unchanged(device, before, seq=0)
    assert not device.link.published  # the command did not run

    device.restart()  # before the download finishes: the list was persisted (S2)
    assert device.updater.downloading == v2.manifest.artifact_id
    before = snapshot(device.state_dir)
    device.updater.handle_command(cmd)
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "revoked_key",
    )
    _unchanged(device, before, seq=0)

    for chunk in v2.chunks:  # the download itself is unaffected and commits
        device.updater.handle_chunk(encode_chunk(chunk))
    assert _outcome(device) == (UpdateOutcome.COMMITTED, None)
    device.updater.handle_command(_report_missing(fleet, v2, seq=11))
    assert device.last.reason == "revoked_key" and device.updater.state.command_seq == 0


def test_revoked_release_key_refused_while_the_download_stalls(
    device: Device, fleet: Fleet, v2: Release
) -> None:
    new_release = SigningKey.generate()
    new_cert = fleet.cert(new_release)
    v3 = fleet.build(V3, 3, chunk_size=CHUNK)
    revs = revocations(fleet, fleet.release)
    device.updater.handle_manifest(carrying(fleet, v2, revs, new_release, new_cert))
    assert device.last.outcome is UpdateOutcome.DOWNLOADING
    for restart in (False, True):
        if restart:
            device.restart()
        before = snapshot(device.state_dir)
        device.updater.handle_manifest(carrying(fleet, v3, None))  # the old, revoked key
        assert (device.last.outcome, device.last.reason) == (UpdateOutcome.FAILED, "revoked_key")
        _unchanged(device, before, seq=0)
        assert device.updater.downloading == v2.manifest.artifact_id  # v2 goes on
        assert artifact_chunks(v3.manifest.artifact_id) not in device.link.subscriptions


def test_revocation_applies_even_when_its_manifest_is_refused(
    device: Device, fleet: Fleet, v2: Release
) -> None:
    v3 = fleet.build(V3, 3, chunk_size=CHUNK)
    device.updater.handle_manifest(carrying(fleet, v3, None))  # a stalled v3 download
    device.updater.handle_manifest(carrying(fleet, v2, revocations(fleet, fleet.coordinator)))
    assert (device.last.outcome, device.last.reason) == (UpdateOutcome.FAILED, "rollback")
    assert device.updater.downloading == v3.manifest.artifact_id
    before = snapshot(device.state_dir)
    device.updater.handle_command(_report_missing(fleet, v3))
    assert (device.last.outcome, device.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "revoked_key",
    )
    _unchanged(device, before, seq=0)
    device.restart()
    device.updater.handle_command(_report_missing(fleet, v3))
    assert device.last.reason == "revoked_key" and device.updater.state.command_seq == 0


def test_download_signed_by_a_newly_revoked_key_is_dropped_at_once(
    device: Device, fleet: Fleet, v2: Release
) -> None:
    v3 = fleet.build(V3, 3, chunk_size=CHUNK)
    device.updater.handle_manifest(carrying(fleet, v3, None))  # signed by the release key
    new_release = SigningKey.generate()
    revs = revocations(fleet, fleet.release)
    device.updater.handle_manifest(carrying(fleet, v2, revs, new_release, fleet.cert(new_release)))
    reasons = [(r.version, r.outcome, r.reason) for r in device.reports[-2:]]
    assert reasons == [
        (3, UpdateOutcome.FAILED, "revoked_key"),
        (2, UpdateOutcome.DOWNLOADING, None),
    ]
    assert artifact_chunks(v3.manifest.artifact_id) not in device.link.subscriptions
    for chunk in v3.chunks:  # chunks of the revoked release are not even looked at
        device.updater.handle_chunk(encode_chunk(chunk))
    assert device.serving.current == ("1", V1) and device.updater.state.floor == 1
    for chunk in v2.chunks:
        device.updater.handle_chunk(encode_chunk(chunk))
    assert device.last.outcome is UpdateOutcome.COMMITTED and device.serving.current == ("2", V2)


def test_an_older_revocation_list_never_rolls_back(
    device: Device, fleet: Fleet, v2: Release
) -> None:
    newer = revocations(fleet, fleet.coordinator, version=3)
    device.updater.handle_manifest(carrying(fleet, v2, newer))
    assert device.updater.state.revocations == newer
    older = revocations(fleet, version=2)  # genuine, root-signed, but older and empty
    v3 = fleet.build(V3, 3, chunk_size=CHUNK)
    device.updater.handle_manifest(carrying(fleet, v3, older))
    assert device.last.outcome is UpdateOutcome.DOWNLOADING  # the manifest itself is fine
    assert device.updater.state.revocations == newer
    for chunk in v3.chunks:
        device.updater.handle_chunk(encode_chunk(chunk))
    assert _outcome(device) == (UpdateOutcome.COMMITTED, None)
    assert device.restart().state.revocations == newer  # the commit did not touch it
    device.updater.handle_command(command_payload(fleet, seq=5))
    assert device.last.reason == "revoked_key" and device.updater.state.command_seq == 0


def test_a_forged_revocation_list_is_ignored(device: Device, fleet: Fleet, v2: Release) -> None:
    """A list not signed by the pinned root changes nothing: revocation is not a DoS tool."""
    evil = revocations(Fleet(root=SigningKey.generate()), fleet.coordinator, version=9)
    device.updater.handle_manifest(carrying(fleet, v2, evil))
    assert device.last.outcome is UpdateOutcome.DOWNLOADING
    assert device.updater.state.revocations is None
    device.updater.handle_command(_report_missing(fleet, v2))
    assert device.updater.state.command_seq == 10  # the coordinator is still trusted


# --- D2: downloads expire --------------------------------------------------------------


@pytest.fixture()
def v3(fleet: Fleet) -> Release:
    return fleet.build(V3, 3, chunk_size=CHUNK)


@pytest.fixture()
def stalled(device: Device, v3: Release) -> Device:
    """dev-a serving v1, timeout 600 s, with a v3 download that received two chunks."""
    device.download_timeout_s = TIMEOUT
    device.restart()
    device.updater.handle_manifest(manifest_payload(device.fleet, v3))
    for chunk in v3.chunks[:2]:
        device.updater.handle_chunk(encode_chunk(chunk))
    assert device.updater.downloading == v3.manifest.artifact_id
    return device


def _expired_reports(dev: Device, since: int = 0) -> list[int]:
    return [r.version for r in dev.reports[since:] if r.reason == "download_expired"]


def test_stalled_download_expires_and_a_lower_version_installs(
    stalled: Device, v2: Release, v3: Release
) -> None:
    # Positive control: before the deadline the stuck v3 still blocks v2 ...
    before = snapshot(stalled.state_dir)
    stalled.clock[0] = NOW + TIMEOUT - 1
    stalled.updater.tick()
    stalled.updater.handle_manifest(manifest_payload(stalled.fleet, v2))
    assert (stalled.last.outcome, stalled.last.reason) == (UpdateOutcome.FAILED, "rollback")
    _unchanged(stalled, before, seq=0)
    assert stalled.updater.downloading == v3.manifest.artifact_id
    assert not _expired_reports(stalled)
    assert stalled.updater.due_in() <= 1  # the owner wakes up for the deadline
    # ... and once it has passed, tick drops it.
    stalled.clock[0] = NOW + TIMEOUT
    stalled.updater.tick()
    assert (stalled.last.version, stalled.last.outcome, stalled.last.reason) == (
        3,
        UpdateOutcome.FAILED,
        "download_expired",
    )
    assert stalled.updater.downloading is None and stalled.updater.due_in() is None
    assert not stalled.link.subscriptions
    assert not list((stalled.state_dir / "downloads").iterdir())
    assert stalled.updater.state.expired_downloads == (v3.manifest.artifact_id,)
    assert (stalled.updater.state.floor, stalled.serving.current) == (1, ("1", V1))
    stalled.updater.tick()
    assert _expired_reports(stalled) == [3]  # reported once
    stalled.deliver(v2)
    assert stalled.last.outcome is UpdateOutcome.COMMITTED
    assert stalled.serving.current == ("2", V2) and stalled.updater.state.floor == 2


def test_retained_expired_manifest_is_not_restarted(
    stalled: Device, v2: Release, v3: Release
) -> None:
    stalled.clock[0] = NOW + TIMEOUT + 1
    stalled.updater.tick()
    stalled.deliver(v2)
    assert stalled.last.outcome is UpdateOutcome.COMMITTED
    for restart in (False, True):  # redelivered at every reconnect, also after a restart
        if restart:
            stalled.restart()
        before, published = snapshot(stalled.state_dir), len(stalled.link.published)
        stalled.updater.handle_manifest(manifest_payload(stalled.fleet, v3))
        assert (stalled.last.outcome, stalled.last.reason) == (
            UpdateOutcome.FAILED,
            "download_expired",
        )
        assert stalled.updater.downloading is None and not stalled.link.subscriptions
        assert snapshot(stalled.state_dir) == before
        assert stalled.serving.current == ("2", V2) and stalled.updater.state.floor == 2
        assert not list((stalled.state_dir / "downloads").iterdir())
        assert len(stalled.link.published) == published  # no resend request either


def test_download_expires_across_a_restart(stalled: Device, v2: Release, v3: Release) -> None:
    stalled.clock[0] = NOW + 400
    stalled.restart()  # the start time is persisted: the restart does not reset it
    assert stalled.updater.downloading == v3.manifest.artifact_id
    stalled.clock[0] = NOW + TIMEOUT  # only 200 s after the restart
    stalled.updater.tick()
    assert stalled.last.reason == "download_expired"
    assert stalled.updater.downloading is None


def test_restart_past_the_deadline_drops_the_download(
    stalled: Device, v2: Release, v3: Release
) -> None:
    stalled.clock[0] = NOW + TIMEOUT + 5
    seen = len(stalled.reports)
    stalled.restart()
    assert _expired_reports(stalled, seen) == [3]
    assert stalled.updater.downloading is None and not stalled.link.subscriptions
    assert not list((stalled.state_dir / "downloads").iterdir())
    assert stalled.updater.state.expired_downloads == (v3.manifest.artifact_id,)
    seen = len(stalled.reports)
    stalled.restart()
    assert not _expired_reports(stalled, seen)  # once, not at every start
    stalled.deliver(v2)
    assert stalled.last.outcome is UpdateOutcome.COMMITTED and stalled.serving.current == ("2", V2)
    stalled.updater.handle_manifest(manifest_payload(stalled.fleet, v3))
    assert stalled.last.reason == "download_expired" and stalled.updater.downloading is None


def test_manifest_expiry_is_a_deadline_too(device: Device, fleet: Fleet, v2: Release) -> None:
    short = fleet.build(V3, 3, chunk_size=CHUNK, ttl_seconds=300)  # local timeout: 3600 s
    device.updater.handle_manifest(manifest_payload(fleet, short))
    device.clock[0] = NOW + 299
    device.updater.tick()
    assert device.updater.downloading == short.manifest.artifact_id
    device.clock[0] = NOW + 300
    device.updater.tick()
    assert (device.last.version, device.last.reason) == (3, "download_expired")
    device.updater.handle_manifest(manifest_payload(fleet, short))
    assert device.last.reason == "expired_manifest"  # V4 comes first: signature, then time
    assert device.updater.downloading is None
    device.deliver(v2)
    assert device.last.outcome is UpdateOutcome.COMMITTED


def test_stored_download_whose_manifest_expired_offline_is_reported(
    device: Device, fleet: Fleet
) -> None:
    short = fleet.build(V3, 3, chunk_size=CHUNK, ttl_seconds=300)
    device.updater.handle_manifest(manifest_payload(fleet, short))
    device.clock[0] = NOW + 1000  # the device was off past the manifest's expiry
    seen = len(device.reports)
    device.restart()
    assert _expired_reports(device, seen) == [3]
    assert device.updater.downloading is None
    assert not list((device.state_dir / "downloads").iterdir())


def test_late_last_chunk_does_not_install(stalled: Device, v3: Release) -> None:
    for chunk in v3.chunks[2:-1]:
        stalled.updater.handle_chunk(encode_chunk(chunk))
    before = snapshot(stalled.state_dir)
    stalled.clock[0] = NOW + TIMEOUT
    stalled.updater.handle_chunk(encode_chunk(v3.chunks[-1]))
    assert (stalled.last.version, stalled.last.reason) == (3, "download_expired")
    assert stalled.serving.current == ("1", V1) and stalled.updater.state.floor == 1
    assert {k: v for k, v in snapshot(stalled.state_dir).items() if k != "state.json"} == {
        k: v for k, v in before.items() if k != "state.json"
    }


def test_lost_start_time_can_only_bring_the_deadline_forward(stalled: Device, v3: Release) -> None:
    """Without its start time a download counts from the manifest's ``issued_at``."""
    (stalled.state_dir / "downloads" / v3.manifest.artifact_id / "started").unlink()
    stalled.clock[0] = NOW + 100
    stalled.restart()
    assert stalled.updater.downloading == v3.manifest.artifact_id
    stalled.clock[0] = NOW + TIMEOUT
    stalled.updater.tick()
    assert stalled.last.reason == "download_expired"


def test_tampered_start_time_cannot_extend_the_deadline(stalled: Device, v3: Release) -> None:
    (stalled.state_dir / "downloads" / v3.manifest.artifact_id / "started").write_text(
        str(NOW + 10**9)
    )
    stalled.clock[0] = NOW + 100
    stalled.restart()  # clamped to now: at most a restart's worth later, never for ever
    stalled.clock[0] = NOW + 100 + TIMEOUT
    stalled.updater.tick()
    assert stalled.last.reason == "download_expired"


def test_expiry_survives_a_broken_status_callback(stalled: Device, v2: Release) -> None:
    stalled.reports = BrokenSink()
    stalled.restart()
    stalled.clock[0] = NOW + TIMEOUT
    stalled.updater.tick()
    assert stalled.updater.downloading is None
    stalled.deliver(v2)
    assert stalled.serving.current == ("2", V2)


def test_report_missing_on_an_expired_download_is_refused(stalled: Device, v3: Release) -> None:
    stalled.clock[0] = NOW + TIMEOUT
    published = len(stalled.link.published)
    cmd = command_payload(
        stalled.fleet,
        action="report_missing",
        artifact_id=v3.manifest.artifact_id,
        seq=3,
        issued_at=NOW + TIMEOUT - 1,
        expires=NOW + TIMEOUT + 60,
    )
    stalled.updater.handle_command(cmd)
    assert (stalled.last.outcome, stalled.last.reason) == (
        UpdateOutcome.COMMAND_FAILED,
        "not_downloading",
    )
    assert len(stalled.link.published) == published
    assert stalled.updater.state.command_seq == 3  # the seq is spent all the same (K6)


def test_download_timeout_must_be_positive(fleet: Fleet, tmp_path: Path) -> None:
    dev = Device(fleet, tmp_path / "s", download_timeout_s=0)
    with pytest.raises(ConfigError):
        dev.restart()
