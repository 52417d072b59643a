"""One test per attack, at the pure level (python-tuf style).

Each attack is built so that only the check it targets stands in its way: signatures,
certificates, lengths and GCM tags are all valid unless they are the thing under test.
Every test asserts the specific error AND that the device kept its installed model and
its anti-rollback floor (``DeviceSim`` commits only after every check passed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from shared.artifacts import (
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
    ProtocolError,
    ReplayAttackError,
    RevokedKeyError,
    RollbackAttackError,
    UnknownKeyError,
    UntrustedKeyError,
    WrongHardwareError,
    WrongRecipientError,
)
from tests.helpers.release import NOW, DeviceSim, Fleet, artifact

OLD = artifact(10_000, seed=99)
NEW = artifact(40_000, seed=7)


@pytest.fixture()
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture()
def device(fleet: Fleet) -> DeviceSim:
    """dev-a running version 1 (floor 1)."""
    return DeviceSim(fleet, installed=OLD, floor=1)


def _refused(
    device: DeviceSim,
    error: type[Exception],
    attempt: Callable[[], object],
    code: str | None = None,
) -> None:
    before = (device.installed, device.floor, device.trust)
    with pytest.raises(error) as info:
        attempt()
    assert type(info.value) is error, f"stopped by {type(info.value).__name__} instead"
    if code:
        assert info.value.code == code  # type: ignore[attr-defined]
    assert (device.installed, device.floor, device.trust) == before  # nothing was lost


def _resign(fleet: Fleet, release, **changes):  # type: ignore[no-untyped-def]
    return fleet.sign(release.manifest.model_copy(update=changes))


def test_baseline_release_installs(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    assert device.install(fleet.sign(release.manifest), release.chunks) == NEW
    assert device.floor == 2


def test_tampered_chunk_reencrypted_by_a_recipient(fleet: Fleet, device: DeviceSim) -> None:
    """dev-b holds the content key, so it can forge a chunk with a valid GCM tag."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    key = unwrap_content_key(m, "dev-b", fleet.devices["dev-b"])
    ad = chunk_ad(m.artifact_id, 1, m.chunk_count)
    plain = decrypt(key, release.chunks[1].body, ad)
    body = encrypt(key, bytes([plain[0] ^ 1]) + plain[1:], ad)
    assert decrypt(key, body, ad)  # GCM alone would accept it
    forged = SealedChunk(m.artifact_id, 1, m.chunk_count, body)
    chunks = [release.chunks[0], forged, *release.chunks[2:]]
    _refused(device, HashMismatchError, lambda: device.install(fleet.sign(m), chunks))


def test_tampered_artifact_with_consistent_chunks(fleet: Fleet, device: DeviceSim) -> None:
    """Chunks well-formed, hashed, encrypted; only the whole-artifact sha256 differs."""
    evil = NEW[:-1] + b"\x00"
    release = fleet.build(evil, 2)
    env = _resign(fleet, release, sha256=hashlib.sha256(NEW).hexdigest())
    _refused(device, HashMismatchError, lambda: device.install(env, release.chunks))


def test_tampered_manifest(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest)
    forged = release.manifest.model_copy(update={"hardware_ids": ("hw-a", "hw-evil")})
    tampered = env.model_copy(
        update={"payload": b64encode(canonical_json(forged.model_dump(mode="json")))}
    )
    _refused(device, BadSignatureError, lambda: device.install(tampered, release.chunks))


def test_manifest_signed_by_unknown_key(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    attacker = SigningKey.generate()
    env = sign_envelope(
        MANIFEST_TYPE, canonical_json(release.manifest.model_dump(mode="json")), attacker
    )
    _refused(device, UnknownKeyError, lambda: device.install(env, release.chunks))


def test_release_key_not_certified_by_root(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    attacker, attacker_root = SigningKey.generate(), SigningKey.generate()
    env = fleet.sign(release.manifest, attacker, fleet.cert(attacker, by=attacker_root))
    _refused(
        device, UntrustedKeyError, lambda: device.install(env, release.chunks), code="untrusted_key"
    )


def test_coordinator_key_cannot_sign_manifests(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest, fleet.coordinator, fleet.coordinator_cert)
    _refused(device, UntrustedKeyError, lambda: device.install(env, release.chunks))


def test_expired_release_key_certificate(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest, cert=fleet.cert(fleet.release, expires=NOW - 1))
    _refused(
        device,
        UntrustedKeyError,
        lambda: device.install(env, release.chunks),
        code="key_certificate_expired",
    )


def test_revoked_release_key(fleet: Fleet, device: DeviceSim) -> None:
    revs = sign_revocations(
        fleet.root,
        RevocationList(
            version=2, issued_at=NOW, revoked_key_ids=(fleet.release.verify_key.key_id,)
        ),
    )
    device.trust = fleet.trust().with_revocations(revs)
    release = fleet.build(NEW, 2)
    _refused(
        device,
        RevokedKeyError,
        lambda: device.install(fleet.sign(release.manifest), release.chunks),
    )


def test_revocation_riding_on_the_manifest_applies_at_once(fleet: Fleet, device: DeviceSim) -> None:
    revs = sign_revocations(
        fleet.root,
        RevocationList(
            version=2, issued_at=NOW, revoked_key_ids=(fleet.release.verify_key.key_id,)
        ),
    )
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest).model_copy(update={"revocations": revs})
    _refused(device, RevokedKeyError, lambda: device.install(env, release.chunks))


def test_rollback_to_older_version(fleet: Fleet, device: DeviceSim) -> None:
    device.floor = 3
    release = fleet.build(NEW, 2)
    _refused(
        device,
        RollbackAttackError,
        lambda: device.install(fleet.sign(release.manifest), release.chunks),
    )


def test_replay_of_installed_manifest(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest)
    device.install(env, release.chunks)
    _refused(device, ReplayAttackError, lambda: device.install(env, release.chunks))


def test_expired_manifest(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2, ttl_seconds=10)
    env = fleet.sign(release.manifest)
    _refused(
        device, ExpiredManifestError, lambda: device.install(env, release.chunks, now=NOW + 10)
    )


def test_wrong_hardware_id(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2, hardware_ids=["hw-b"])
    _refused(
        device,
        WrongHardwareError,
        lambda: device.install(fleet.sign(release.manifest), release.chunks),
    )


def test_truncated_artifact(fleet: Fleet, device: DeviceSim) -> None:
    """Signed sha256 matches the short bytes; only the signed length is violated."""
    release = fleet.build(NEW[:-100], 2)
    env = _resign(fleet, release, length=len(NEW))
    _refused(device, LengthMismatchError, lambda: device.install(env, release.chunks))


def test_oversized_artifact(fleet: Fleet, device: DeviceSim) -> None:
    """Endless data: the frame expands past the signed length; decoding stops there."""
    release = fleet.build(NEW + b"\x00" * 50_000, 2)
    env = _resign(fleet, release, length=len(NEW))
    _refused(device, LengthMismatchError, lambda: device.install(env, release.chunks))


def test_oversized_chunk(fleet: Fleet, device: DeviceSim) -> None:
    """A longer chunk whose hash is even signed is refused by the signed layout."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    key = unwrap_content_key(m, "dev-a", fleet.devices["dev-a"])
    ad = chunk_ad(m.artifact_id, 0, m.chunk_count)
    body = encrypt(key, decrypt(key, release.chunks[0].body, ad) + b"x", ad)
    hashes = (hashlib.sha256(body).hexdigest(), *m.chunk_sha256[1:])
    env = _resign(fleet, release, chunk_sha256=hashes)
    chunks = [SealedChunk(m.artifact_id, 0, m.chunk_count, body), *release.chunks[1:]]
    _refused(device, LengthMismatchError, lambda: device.install(env, chunks))


def test_chunks_swapped_between_indices(fleet: Fleet, device: DeviceSim) -> None:
    """Even with hashes signed for the swapped order, GCM's associated data binds the index."""
    release = fleet.build(NEW, 2, chunk_size=512)  # chunks 0 and 1 both full length
    m = release.manifest
    c0, c1 = release.chunks[0], release.chunks[1]
    hashes = (m.chunk_sha256[1], m.chunk_sha256[0], *m.chunk_sha256[2:])
    env = _resign(fleet, release, chunk_sha256=hashes)
    swapped = [
        SealedChunk(m.artifact_id, 0, m.chunk_count, c1.body),
        SealedChunk(m.artifact_id, 1, m.chunk_count, c0.body),
        *release.chunks[2:],
    ]
    _refused(device, MalformedArtifactError, lambda: device.install(env, swapped))


def test_content_key_wrapped_for_another_device(fleet: Fleet, device: DeviceSim) -> None:
    """dev-a's entry holds a key sealed to dev-b: verification passes, unwrapping cannot."""
    release = fleet.build(NEW, 2)
    m = release.manifest
    key = unwrap_content_key(m, "dev-b", fleet.devices["dev-b"])
    wrong = seal(
        fleet.devices["dev-b"].public_key, key.to_bytes(), content_key_ad(m.artifact_id, "dev-a")
    )
    env = _resign(fleet, release, content_keys={"dev-a": b64encode(wrong)})
    _refused(device, WrongRecipientError, lambda: device.install(env, release.chunks))


def test_manifest_without_a_key_for_this_device(fleet: Fleet, device: DeviceSim) -> None:
    release = fleet.build(NEW, 2)
    env = fleet.sign(release.manifest.for_devices(["dev-b"]))
    _refused(device, WrongRecipientError, lambda: device.install(env, release.chunks))


def test_certificate_replayed_as_manifest(fleet: Fleet, device: DeviceSim) -> None:
    """A root-signed document of another type is never accepted as a manifest."""
    release = fleet.build(NEW, 2)
    _refused(device, ProtocolError, lambda: device.install(fleet.release_cert, release.chunks))


def test_role_enum_is_closed() -> None:
    assert {r.value for r in Role} == {"release", "coordinator"}
