"""One test per attack, delivered to the real device updater (python-tuf style).

Every attack goes through :func:`edge.updater.routing.dispatch` on the real topics of
:mod:`shared.protocol.topics` — exactly what the agent does with an MQTT message — into a
real :class:`edge.updater.Updater` (fake link, injected clock, recording probation; see
:mod:`tests.helpers.updater`) that has version 1 committed through the same path.

Each attack is built so that only the check it targets stands in its way: signatures,
certificates, lengths and GCM tags are all valid unless they are the thing under test.
Every test asserts

1. the reason code the updater reports on its status (``UpdateReport.reason``), taken
   from the error class's ``code`` (``shared/errors.py``), and that it is the *only*
   refusal (so a different check did not stop it first);
2. that nothing changed: ``state.json`` and the slot files byte-identical, the installed
   model still active and serving, the floor unchanged, also after a restart from disk;
3. a positive control where useful: the same pipeline with the untampered input commits
   (on the same device, or on a twin copied from the same state before the attack), so a
   refusal never passes merely because nothing works.

Rule ids (T1-T6, V1-V7, P1-P2, C1-C4, A1-A8, K1-K6, J1, N1, ...) are those of
``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.updater.routing import dispatch
from shared.artifacts import (
    Envelope,
    Precision,
    Release,
    RevocationList,
    Role,
    SealedChunk,
    chunk_ad,
    sign_envelope,
    sign_revocations,
    unwrap_content_key,
)
from shared.artifacts.canonical import canonical_json
from shared.artifacts.manifest import b64encode, content_key_ad
from shared.artifacts.trust import MANIFEST_TYPE
from shared.crypto import SigningKey, decrypt, encrypt, seal
from shared.errors import (
    BadSignatureError,
    ExpiredManifestError,
    HashMismatchError,
    LengthMismatchError,
    MalformedArtifactError,
    NonCanonicalPayloadError,
    ProtocolError,
    ReplayAttackError,
    RevokedKeyError,
    RollbackAttackError,
    UnknownKeyError,
    UntrustedKeyError,
    WrongHardwareError,
    WrongRecipientError,
)
from shared.protocol import topics as t
from shared.protocol.codec import encode_chunk, encode_message
from shared.protocol.messages import ManifestMessage, UpdateOutcome
from tests.helpers.release import NOW, Fleet, artifact
from tests.helpers.updater import Device, snapshot

OLD = artifact(10_000, seed=99)  # version 1, installed before every attack
NEW = artifact(40_000, seed=7)
DEV = "dev-a"

FAILED, REJECTED = UpdateOutcome.FAILED, UpdateOutcome.CHUNK_REJECTED


# --- delivery through the agent's entry point ---------------------------------------------


def send_manifest(dev: Device, envelope: Envelope) -> None:
    """A ManifestMessage on ``fedge/v1/devices/dev-a/manifest``, routed as the agent does."""
    payload = encode_message(ManifestMessage(device_id=DEV, sent_at=NOW, envelope=envelope))
    assert dispatch(dev.updater, t.device_manifest(DEV), payload, device_id=DEV, groups=())


def send_chunks(dev: Device, chunks: Iterable[SealedChunk]) -> None:
    """Each chunk on ``fedge/v1/artifacts/{id}/chunks/{index}`` (its own header's topic)."""
    for chunk in chunks:
        topic = t.artifact_chunk(chunk.artifact_id, chunk.index)
        assert dispatch(dev.updater, topic, encode_chunk(chunk), device_id=DEV, groups=())


def deliver(dev: Device, envelope: Envelope, chunks: Iterable[SealedChunk]) -> None:
    send_manifest(dev, envelope)
    send_chunks(dev, chunks)


def install(dev: Device, fleet: Fleet, data: bytes, version: int, **kw: object) -> Release:
    """Commit ``data`` as ``version`` through the updater (test set-up and controls)."""
    release = fleet.build(data, version, **kw)
    deliver(dev, fleet.sign(release.manifest), release.chunks)
    assert_committed(dev, data, version)
    return release


def assert_committed(dev: Device, data: bytes, version: int) -> None:
    assert dev.last.outcome is UpdateOutcome.COMMITTED, dev.reports[-3:]
    assert dev.serving.current == (str(version), data)
    path, active = dev.updater.active_model()
    assert (active, path.read_bytes()) == (str(version), data)
    assert dev.updater.state.floor == version


# --- "nothing changed" --------------------------------------------------------------------


@dataclass(frozen=True)
class Before:
    """What an attack must leave exactly as it was."""

    files: dict[str, bytes]  # state.json and every slot file
    active: tuple[Path, str] | None
    floor: int
    serving: tuple[str, bytes] | None
    loads: int
    reports: int


def before(dev: Device) -> Before:
    return Before(
        files=snapshot(dev.state_dir),
        active=dev.updater.active_model(),
        floor=dev.updater.state.floor,
        serving=dev.serving.current,
        loads=dev.serving.loads,
        reports=len(dev.reports),
    )


def refused(
    dev: Device,
    was: Before,
    code: str,
    outcome: UpdateOutcome = FAILED,
    *,
    state_changes: frozenset[str] = frozenset(),
) -> None:
    """The attack was stopped by ``code`` alone and left the committed state untouched.

    ``state_changes`` names the ``state.json`` keys the protocol requires to change even
    on a refusal (T6: an adopted revocation list); everything else stays byte-identical.
    """
    new = dev.reports[was.reports :]
    refusals = [(r.outcome, r.reason) for r in new if r.reason is not None]
    assert refusals == [(outcome, code)], f"stopped by {refusals} instead"
    assert UpdateOutcome.COMMITTED not in [r.outcome for r in new]
    files = snapshot(dev.state_dir)
    if state_changes:
        old_state = json.loads(was.files["state.json"])
        new_state = json.loads(files.pop("state.json"))
        for key in state_changes:
            old_state.pop(key, None)
            new_state.pop(key, None)
        assert new_state == old_state
        files["state.json"] = was.files["state.json"]
    assert files == was.files  # state.json and slots byte-identical
    assert dev.updater.active_model() == was.active
    assert dev.updater.state.floor == was.floor
    assert dev.serving.current == was.serving  # the old model kept serving...
    assert dev.serving.loads == was.loads  # ...and nothing else was ever loaded
    restarted = dev.restart()  # and so it is on disk, for the next start
    assert restarted.active_model() == was.active
    assert restarted.state.floor == was.floor


def twin(dev: Device) -> Device:
    """A second updater over a copy of ``dev``'s state directory (for positive controls)."""
    copy = dev.state_dir.with_name(f"{dev.state_dir.name}-twin")
    shutil.copytree(dev.state_dir, copy)
    other = Device(dev.fleet, copy, clock=list(dev.clock), trust=dev.trust)
    other.restart()
    return other


def resign(fleet: Fleet, release: Release, **changes: object) -> Envelope:
    """The release's manifest with ``changes``, validly signed by the release key."""
    return fleet.sign(release.manifest.model_copy(update=changes))


def revoke_release_key(fleet: Fleet) -> Envelope:
    return sign_revocations(
        fleet.root,
        RevocationList(
            version=2, issued_at=NOW, revoked_key_ids=(fleet.release.verify_key.key_id,)
        ),
    )


@pytest.fixture()
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture()
def device(fleet: Fleet, tmp_path: Path) -> Device:
    """dev-a running version 1 (floor 1), committed through the real updater."""
    dev = Device(fleet, tmp_path / "state")
    dev.restart()
    install(dev, fleet, OLD, 1)
    return dev


# --- the attacks ----------------------------------------------------------------------------


def test_baseline_release_installs(fleet: Fleet, device: Device) -> None:
    """Positive control for the catalogue: an untampered v2 commits over v1 (I1, S2)."""
    first = device.updater.state.active
    release = fleet.build(NEW, 2)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    assert [r.outcome for r in device.reports[-2:]] == [
        UpdateOutcome.DOWNLOADING,
        UpdateOutcome.COMMITTED,
    ]
    assert_committed(device, NEW, 2)
    assert device.updater.state.active is first.other  # I1: the inactive slot was written
    assert device.restart().active_model()[1] == "2"


def test_tampered_chunk_reencrypted_by_a_recipient(fleet: Fleet, device: Device) -> None:
    """A3: dev-b holds the content key, so it can forge a chunk with a valid GCM tag;
    only the signed chunk hash stops it (before the chunk is stored)."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    key = unwrap_content_key(m, "dev-b", fleet.devices["dev-b"])
    ad = chunk_ad(m.artifact_id, 1, m.chunk_count)
    plain = decrypt(key, release.chunks[1].body, ad)
    body = encrypt(key, bytes([plain[0] ^ 1]) + plain[1:], ad)
    assert decrypt(key, body, ad)  # GCM alone would accept it
    assert len(body) == len(release.chunks[1].body)  # A2 alone would accept it
    forged = SealedChunk(m.artifact_id, 1, m.chunk_count, body)
    was = before(device)
    deliver(device, fleet.sign(m), [release.chunks[0], forged, *release.chunks[2:]])
    refused(device, was, HashMismatchError.code, REJECTED)
    assert device.updater.missing() == (1,)  # the forged body was never stored
    send_chunks(device, [release.chunks[1]])  # control: the genuine chunk completes it
    assert_committed(device, NEW, 2)


def test_tampered_artifact_with_consistent_chunks(fleet: Fleet, device: Device) -> None:
    """A8: chunks well-formed, hashed, encrypted; only the whole-artifact sha256 differs."""
    evil = NEW[:-1] + b"\x00"
    release = fleet.build(evil, 2)
    env = resign(fleet, release, sha256=hashlib.sha256(NEW).hexdigest())
    control = twin(device)
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, HashMismatchError.code)
    deliver(control, fleet.sign(release.manifest), release.chunks)  # honest sha256
    assert_committed(control, evil, 2)


def test_tampered_manifest(fleet: Fleet, device: Device) -> None:
    """V1/T3: a signed payload changed after signing (hardware ids widened)."""
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest)
    forged = release.manifest.model_copy(update={"hardware_ids": ("hw-a", "hw-evil")})
    tampered = env.model_copy(
        update={"payload": b64encode(canonical_json(forged.model_dump(mode="json")))}
    )
    was = before(device)
    deliver(device, tampered, release.chunks)
    refused(device, was, BadSignatureError.code)
    assert (device.reports[was.reports].version, device.reports[was.reports].artifact_id) == (
        0,
        None,
    )  # nothing of an unauthenticated payload is reported as if it were true
    deliver(device, env, release.chunks)  # control: the untampered envelope
    assert_committed(device, NEW, 2)


def test_manifest_signed_by_unknown_key(fleet: Fleet, device: Device) -> None:
    """T2: no certificate attached or known for the signing key id."""
    release = fleet.build(NEW, 2)
    attacker = SigningKey.generate()
    env = sign_envelope(
        MANIFEST_TYPE, canonical_json(release.manifest.model_dump(mode="json")), attacker
    )
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, UnknownKeyError.code)
    deliver(device, fleet.sign(release.manifest), release.chunks)  # control: release key
    assert_committed(device, NEW, 2)


def test_release_key_not_certified_by_root(fleet: Fleet, device: Device) -> None:
    """V2/T4: a valid signature under a key certified by some other root."""
    release = fleet.build(NEW, 2)
    attacker, attacker_root = SigningKey.generate(), SigningKey.generate()
    env = fleet.sign(release.manifest, attacker, fleet.cert(attacker, by=attacker_root))
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, UntrustedKeyError.code)
    # Control: the very same key, had the pinned root certified it, would be accepted.
    deliver(device, fleet.sign(release.manifest, attacker, fleet.cert(attacker)), release.chunks)
    assert_committed(device, NEW, 2)


def test_coordinator_key_cannot_sign_manifests(fleet: Fleet, device: Device) -> None:
    """V2/T4: root-certified, but for role ``coordinator``, not ``release``."""
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest, fleet.coordinator, fleet.coordinator_cert)
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, UntrustedKeyError.code)
    deliver(device, fleet.sign(release.manifest), release.chunks)  # control: release role
    assert_committed(device, NEW, 2)


def test_expired_release_key_certificate(fleet: Fleet, device: Device) -> None:
    """V2/T4: the release key's certificate expired (``issued_at ≤ now < expires``)."""
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest, cert=fleet.cert(fleet.release, expires=NOW - 1))
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, "key_certificate_expired")  # an UntrustedKeyError with its own code
    deliver(device, fleet.sign(release.manifest), release.chunks)  # control: valid cert
    assert_committed(device, NEW, 2)


def test_revoked_release_key(fleet: Fleet, device: Device) -> None:
    """V3/T5: the device holds a root-signed revocation list naming the release key."""
    device.trust = fleet.trust().with_revocations(revoke_release_key(fleet))
    device.restart()
    release = fleet.build(NEW, 2)
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, RevokedKeyError.code)
    # Control: a release key the list does not name still gets through on this device.
    other = SigningKey.generate()
    deliver(device, fleet.sign(release.manifest, other, fleet.cert(other)), release.chunks)
    assert_committed(device, NEW, 2)


def test_revocation_riding_on_the_manifest_applies_at_once(fleet: Fleet, device: Device) -> None:
    """T6: a newer root-signed list on the envelope is absorbed before the manifest is
    judged (T5 then refuses it) and persisted; nothing else in ``state.json`` changes."""
    revs = revoke_release_key(fleet)
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest)
    control = twin(device)
    was = before(device)
    deliver(device, env.model_copy(update={"revocations": revs}), release.chunks)
    refused(device, was, RevokedKeyError.code, state_changes=frozenset({"revocations"}))
    held = json.loads(snapshot(device.state_dir)["state.json"])["revocations"]
    assert Envelope.model_validate(held) == revs  # saved (S2), so it survives a restart
    was = before(device)
    deliver(device, env, release.chunks)  # the same manifest without the list: still refused
    refused(device, was, RevokedKeyError.code)
    deliver(control, env, release.chunks)  # control: without the list it commits
    assert_committed(control, NEW, 2)


def test_rollback_to_older_version(fleet: Fleet, device: Device) -> None:
    """V6: a validly signed version below the floor (3 committed, 2 offered)."""
    release = fleet.build(NEW, 2)
    control = twin(device)  # still at floor 1
    install(device, fleet, artifact(20_000, seed=3), 3)
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, RollbackAttackError.code)
    deliver(control, fleet.sign(release.manifest), release.chunks)  # control: above floor 1
    assert_committed(control, NEW, 2)


def test_replay_of_installed_manifest_changes_nothing(fleet: Fleet, device: Device) -> None:
    """V6 (=): the installed manifest delivered again (the retained message after a
    reconnect) is answered ``up_to_date``: no download, no reinstall, nothing written."""
    release = install(device, fleet, NEW, 2)
    env = fleet.sign(release.manifest)
    was = before(device)
    deliver(device, env, release.chunks)
    assert [r.outcome for r in device.reports[was.reports :]] == [UpdateOutcome.UP_TO_DATE]
    assert snapshot(device.state_dir) == was.files  # not a refusal: simply not acted on
    assert device.serving.loads == was.loads and device.serving.current == ("2", NEW)
    assert not device.link.subscriptions  # no download was started
    assert device.restart().active_model() == was.active


def test_replay_of_installed_version_with_another_artifact(fleet: Fleet, device: Device) -> None:
    """V6 (=): a validly signed manifest for the installed version number but other bytes."""
    release = fleet.build(NEW, 1)
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, ReplayAttackError.code)
    newer = fleet.build(NEW, 2)  # control: the same bytes one version up
    deliver(device, fleet.sign(newer.manifest), newer.chunks)
    assert_committed(device, NEW, 2)


def test_replay_of_rolled_back_manifest(fleet: Fleet, device: Device) -> None:
    """V6 with R1-R3: after an operator rollback from 2 to 1 the floor stays 2, so the
    retained manifest of 2 is refused as ``replay`` instead of reinstalled."""
    from tests.edge.test_updater_commands import command_payload

    release = install(device, fleet, NEW, 2)
    cmd = command_payload(fleet, seq=1)
    assert dispatch(device.updater, t.device_cmd(DEV), cmd, device_id=DEV, groups=())
    assert device.last.outcome is UpdateOutcome.ROLLED_BACK
    assert device.updater.active_model()[1] == "1" and device.updater.state.floor == 2
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, ReplayAttackError.code)
    assert device.serving.current == ("1", OLD)


def test_expired_manifest(fleet: Fleet, device: Device) -> None:
    """V4: ``now ≥ expires`` (freeze attack: an old, once valid manifest held back)."""
    release = fleet.build(NEW, 2, ttl_seconds=10)
    env = fleet.sign(release.manifest)
    control = twin(device)
    device.clock[0] = NOW + 10
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, ExpiredManifestError.code)
    control.clock[0] = NOW + 9  # control: one second earlier it commits
    deliver(control, env, release.chunks)
    assert_committed(control, NEW, 2)


def test_wrong_hardware_id(fleet: Fleet, device: Device) -> None:
    """V5: the manifest does not list this device's hardware id."""
    release = fleet.build(NEW, 2, hardware_ids=["hw-b"])
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, WrongHardwareError.code)
    ok = fleet.build(NEW, 2, hardware_ids=["hw-b", "hw-a"])  # control: listed
    deliver(device, fleet.sign(ok.manifest), ok.chunks)
    assert_committed(device, NEW, 2)


def test_truncated_artifact(fleet: Fleet, device: Device) -> None:
    """A7: signed sha256 matches the short bytes; only the signed length is violated."""
    short = NEW[:-100]
    release = fleet.build(short, 2)
    env = resign(fleet, release, length=len(NEW))
    control = twin(device)
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, LengthMismatchError.code)
    deliver(control, fleet.sign(release.manifest), release.chunks)  # control: true length
    assert_committed(control, short, 2)


def test_oversized_artifact(fleet: Fleet, device: Device) -> None:
    """A7: endless data: the frame expands past the signed length; decoding stops there."""
    long = NEW + b"\x00" * 50_000
    release = fleet.build(long, 2)
    env = resign(fleet, release, length=len(NEW))
    control = twin(device)
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, LengthMismatchError.code)
    deliver(control, fleet.sign(release.manifest), release.chunks)  # control: true length
    assert_committed(control, long, 2)


def test_oversized_chunk(fleet: Fleet, device: Device) -> None:
    """A2: a longer chunk, whose hash is even signed, is refused by the signed layout."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    key = unwrap_content_key(m, DEV, fleet.devices[DEV])
    ad = chunk_ad(m.artifact_id, 0, m.chunk_count)
    body = encrypt(key, decrypt(key, release.chunks[0].body, ad) + b"x", ad)
    hashes = (hashlib.sha256(body).hexdigest(), *m.chunk_sha256[1:])
    env = resign(fleet, release, chunk_sha256=hashes)
    chunks = [SealedChunk(m.artifact_id, 0, m.chunk_count, body), *release.chunks[1:]]
    control = twin(device)
    was = before(device)
    deliver(device, env, chunks)
    refused(device, was, LengthMismatchError.code, REJECTED)
    assert device.updater.missing() == (0,)  # never stored
    deliver(control, fleet.sign(m), release.chunks)  # control: the genuine layout
    assert_committed(control, NEW, 2)


def test_chunks_swapped_between_indices(fleet: Fleet, device: Device) -> None:
    """A5: even with hashes signed for the swapped order (A1-A3 pass), GCM's associated
    data binds each body to its index."""
    release = fleet.build(NEW, 2, chunk_size=512)  # chunks 0 and 1 both full length
    m = release.manifest
    c0, c1 = release.chunks[0], release.chunks[1]
    hashes = (m.chunk_sha256[1], m.chunk_sha256[0], *m.chunk_sha256[2:])
    env = resign(fleet, release, chunk_sha256=hashes)
    swapped = [
        SealedChunk(m.artifact_id, 0, m.chunk_count, c1.body),
        SealedChunk(m.artifact_id, 1, m.chunk_count, c0.body),
        *release.chunks[2:],
    ]
    control = twin(device)
    was = before(device)
    deliver(device, env, swapped)
    refused(device, was, MalformedArtifactError.code)
    deliver(control, fleet.sign(m), release.chunks)  # control: the genuine order
    assert_committed(control, NEW, 2)


def test_content_key_wrapped_for_another_device(fleet: Fleet, device: Device) -> None:
    """V7 (unwrap): dev-a's entry holds a key sealed to dev-b: verification passes,
    unwrapping cannot."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    key = unwrap_content_key(m, "dev-b", fleet.devices["dev-b"])
    wrong = seal(
        fleet.devices["dev-b"].public_key, key.to_bytes(), content_key_ad(m.artifact_id, DEV)
    )
    env = resign(fleet, release, content_keys={DEV: b64encode(wrong)})
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, WrongRecipientError.code)
    deliver(device, fleet.sign(m.for_devices([DEV])), release.chunks)  # control: own key
    assert_committed(device, NEW, 2)


def test_manifest_without_a_key_for_this_device(fleet: Fleet, device: Device) -> None:
    """V7: own device id ∉ ``content_keys`` (another device's per-device manifest)."""
    release = fleet.build(NEW, 2)
    was = before(device)
    deliver(device, fleet.sign(release.manifest.for_devices(["dev-b"])), release.chunks)
    refused(device, was, WrongRecipientError.code)
    deliver(device, fleet.sign(release.manifest.for_devices([DEV])), release.chunks)
    assert_committed(device, NEW, 2)


def test_certificate_replayed_as_manifest(fleet: Fleet, device: Device) -> None:
    """T1: a root-signed document of another type is never accepted as a manifest."""
    release = fleet.build(NEW, 2)
    was = before(device)
    deliver(device, fleet.release_cert, release.chunks)
    refused(device, was, ProtocolError.code)
    deliver(device, fleet.sign(release.manifest), release.chunks)  # control: a manifest
    assert_committed(device, NEW, 2)


def test_role_enum_is_closed() -> None:
    """T4: the only roles a certificate can grant (pure: no device involved)."""
    assert {r.value for r in Role} == {"release", "coordinator"}


# --- further attacks on the same entry points --------------------------------------------


def test_non_canonical_manifest_payload(fleet: Fleet, device: Device) -> None:
    """J1: validly signed bytes that are not canonical JSON (whitespace after separators)."""
    release = fleet.build(NEW, 2)
    fields = release.manifest.model_dump(mode="json")
    loose = json.dumps(fields, sort_keys=True).encode()  # ", " and ": "
    assert json.loads(loose) == json.loads(canonical_json(fields))  # the same meaning
    env = sign_envelope(MANIFEST_TYPE, loose, fleet.release, certificate=fleet.release_cert)
    was = before(device)
    deliver(device, env, release.chunks)
    refused(device, was, NonCanonicalPayloadError.code)
    canonical = canonical_json(fields)  # control: the same fields, canonically encoded
    env = sign_envelope(MANIFEST_TYPE, canonical, fleet.release, certificate=fleet.release_cert)
    deliver(device, env, release.chunks)
    assert_committed(device, NEW, 2)


def test_model_larger_than_the_profile_allows(fleet: Fleet, device: Device) -> None:
    """P1: ``length`` > ``max_model_bytes``: refused before any download."""
    release = fleet.build(NEW, 2)
    control = twin(device)
    device.max_model_bytes = len(NEW) - 1
    device.restart()
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, "model_too_large")  # a ModelLoadError with its own code (P1)
    assert not device.link.subscriptions and device.updater.downloading is None
    deliver(control, fleet.sign(release.manifest), release.chunks)  # control: within limits
    assert_committed(control, NEW, 2)


def test_precision_the_profile_does_not_accept(fleet: Fleet, device: Device) -> None:
    """P2: ``precision`` not among the profile's precisions (int8 only here)."""
    release = fleet.build(NEW, 2, precision=Precision.FLOAT16)
    was = before(device)
    deliver(device, fleet.sign(release.manifest), release.chunks)
    refused(device, was, "precision_not_accepted")
    assert device.updater.downloading is None
    ok = fleet.build(NEW, 2)  # control: int8
    deliver(device, fleet.sign(ok.manifest), ok.chunks)
    assert_committed(device, NEW, 2)


def test_chunk_on_another_index_topic(fleet: Fleet, device: Device) -> None:
    """C4: chunk 0's bytes (valid for index 0) published on chunk 1's topic."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    send_manifest(device, fleet.sign(m))
    was = before(device)
    wrong = t.artifact_chunk(m.artifact_id, 1)
    payload = encode_chunk(release.chunks[0])
    assert dispatch(device.updater, wrong, payload, device_id=DEV, groups=())
    refused(device, was, ProtocolError.code, REJECTED)
    assert 0 in device.updater.missing()  # not stored
    send_chunks(device, release.chunks)  # control: each on its own topic
    assert_committed(device, NEW, 2)


def test_chunk_claiming_another_chunk_count(fleet: Fleet, device: Device) -> None:
    """A1: a chunk of this artifact whose header ``count`` differs from the manifest's."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    c0 = release.chunks[0]
    send_manifest(device, fleet.sign(m))
    was = before(device)
    send_chunks(device, [SealedChunk(m.artifact_id, 0, m.chunk_count + 1, c0.body)])
    refused(device, was, MalformedArtifactError.code, REJECTED)
    assert 0 in device.updater.missing()
    send_chunks(device, release.chunks)  # control: the genuine headers
    assert_committed(device, NEW, 2)


@pytest.mark.parametrize("index", ["01", "+1", "\u00b9", "\u0661"])
def test_chunk_topic_with_a_non_canonical_index(fleet: Fleet, device: Device, index: str) -> None:
    """N1: ``01``, ``+1``, ``¹``, ``١`` are not chunk indices: the topic is not a chunk
    topic, the updater never sees the payload."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    send_manifest(device, fleet.sign(m))
    was = before(device)
    topic = t.artifact_chunk(m.artifact_id, 1).rsplit("/", 1)[0] + "/" + index
    payload = encode_chunk(release.chunks[1])
    assert not dispatch(device.updater, topic, payload, device_id=DEV, groups=())
    assert len(device.reports) == was.reports  # nothing reported: nothing was done
    assert 1 in device.updater.missing()  # not stored
    assert snapshot(device.state_dir) == was.files
    send_chunks(device, release.chunks)  # control: the canonical topics
    assert_committed(device, NEW, 2)
