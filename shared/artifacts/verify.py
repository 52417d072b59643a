"""Manifest verification: the checks a device runs before anything touches an install slot.

:func:`verify_manifest` applies, in this order, each check raising the error named after
the attack it stops (the order is part of the wire contract, see ``docs/protocol.md``):

1. V1 signature over the exact payload bytes   → ``BadSignatureError`` (tampered manifest)
   (preceded by the key lookup → ``UnknownKeyError``: signed by an unknown key)
2. V2 release key certified by the pinned root, → ``UntrustedKeyError``
   for the ``release`` role, certificate valid;
   V3 key not revoked                           → ``RevokedKeyError``
3. V4 manifest not expired                      → ``ExpiredManifestError`` (freeze attack)
4. V5 hardware id listed                        → ``WrongHardwareError``
5. V6 version above the persisted floor         → ``RollbackAttackError`` / ``ReplayAttackError``
6. V7 this device holds a wrapped content key   → ``WrongRecipientError``

Signature first: nothing in an unauthenticated payload is parsed or acted on.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.artifacts.manifest import Manifest, manifest_from_bytes
from shared.artifacts.trust import MANIFEST_TYPE, Envelope, Role, TrustStore, verify_signed
from shared.errors import (
    ExpiredManifestError,
    ReplayAttackError,
    RollbackAttackError,
    WrongHardwareError,
    WrongRecipientError,
)

__all__ = ["VerifiedManifest", "verify_manifest"]


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest that passed every check, and the (possibly updated) trust store.

    Attributes:
        manifest: The verified manifest.
        trust: The trust store after absorbing a newer root-signed revocation list carried
            by the envelope; the caller persists it.
    """

    manifest: Manifest
    trust: TrustStore


def verify_manifest(
    envelope: Envelope,
    trust: TrustStore,
    *,
    device_id: str,
    hardware_id: str,
    floor_version: int,
    now: int,
) -> VerifiedManifest:
    """Verify a signed manifest for one device (see module docstring for the order).

    Args:
        envelope: The signed manifest as received.
        trust: The device's trust store (pinned root, newest revocation list).
        device_id: This device's id.
        hardware_id: This device's hardware id.
        floor_version: The persisted high-water mark: the version last committed.
        now: Current time, seconds since the Unix epoch (UTC).

    Raises:
        SecurityError: a subclass naming the failed check.
        ProtocolError: the envelope or payload is malformed.
    """
    # A newer root-signed revocation list rides along; absorb it before judging the key,
    # so a freshly revoked key is refused by the very manifest that announces it.
    trust = trust.absorb_revocations(envelope.revocations)
    payload, _cert = verify_signed(  # V1-V3
        envelope, trust, payload_type=MANIFEST_TYPE, role=Role.RELEASE, now=now
    )
    manifest = manifest_from_bytes(payload)
    if now >= manifest.expires:  # V4: stops freeze attacks (withholding newer manifests)
        raise ExpiredManifestError("manifest expired")
    if hardware_id not in manifest.hardware_ids:  # V5
        raise WrongHardwareError("manifest is not for this hardware")
    if manifest.version < floor_version:  # V6: anti-rollback high-water mark
        raise RollbackAttackError(f"version {manifest.version} is below floor {floor_version}")
    if manifest.version == floor_version:  # V6: the committed manifest re-sent
        raise ReplayAttackError(f"version {manifest.version} is already installed")
    if device_id not in manifest.content_keys:  # V7
        raise WrongRecipientError("no content key for this device")
    return VerifiedManifest(manifest, trust)
