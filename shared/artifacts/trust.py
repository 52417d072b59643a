"""Signed envelopes, root-certified keys, revocation and the device's trust store.

Trust model (after TUF's root → targets delegation, reduced to what a fleet needs):

- An **offline root key** is pinned on every device at enrollment. It signs nothing but
  key certificates and revocation lists.
- A **key certificate** (root-signed) delegates a role (``release``: manifests;
  ``coordinator``: commands) to a key until an expiry time. Rotation is issuing a new
  certificate; no device-side configuration changes.
- A **revocation list** (root-signed, versioned) names key ids that must never be trusted
  again. Devices keep the highest version they have seen (rule T5 stops a rollback to an
  older list).

Every signed document is an :class:`Envelope`: ``payload_type``, base64 ``payload``, the
signer's ``keyid`` and an Ed25519 ``sig`` over ``PAE(payload_type, payload)``. An envelope
may carry the signer's certificate and the latest revocation list, so a device verifies
a manifest with nothing but its pinned root key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.artifacts.canonical import (
    JSON_ARRAY,
    SpecVersion,
    canonical_json,
    json_enum,
    pae,
    parse_signed_model,
)
from shared.artifacts.manifest import Hex256, b64decode, b64encode
from shared.crypto import SigningKey, VerifyKey
from shared.errors import (
    BadSignatureError,
    CryptoError,
    ProtocolError,
    RevokedKeyError,
    RollbackAttackError,
    SecurityError,
    UnknownKeyError,
    UntrustedKeyError,
)

__all__ = [
    "CERTIFICATE_TYPE",
    "COMMAND_TYPE",
    "MANIFEST_TYPE",
    "REVOCATIONS_TYPE",
    "Envelope",
    "KeyCertificate",
    "RevocationList",
    "Role",
    "TrustStore",
    "certify_key",
    "open_envelope",
    "sign_envelope",
    "sign_revocations",
    "verify_signed",
]

MANIFEST_TYPE = "application/vnd.fedge.manifest.v1+json"
COMMAND_TYPE = "application/vnd.fedge.command.v1+json"
CERTIFICATE_TYPE = "application/vnd.fedge.key-certificate.v1+json"
REVOCATIONS_TYPE = "application/vnd.fedge.revocations.v1+json"


class Role(StrEnum):
    """What a certified key may sign."""

    RELEASE = "release"
    COORDINATOR = "coordinator"


class Envelope(BaseModel):
    """A signed document (DSSE-style, one signature)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    payload_type: str = Field(max_length=100)
    payload: str = Field(max_length=200_000)
    keyid: Hex256
    sig: str = Field(max_length=100)
    certificate: Envelope | None = None
    revocations: Envelope | None = None

    def payload_bytes(self) -> bytes:
        """The decoded payload (not yet verified!)."""
        return b64decode(self.payload)


class KeyCertificate(BaseModel):
    """A root-signed delegation of ``role`` to ``public_key`` until ``expires``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec_version: SpecVersion = 1
    role: Annotated[Role, json_enum(Role)]  # J2: a JSON string on the wire
    key_id: Hex256
    public_key: str  # base64 of the raw 32-byte Ed25519 key
    issued_at: int = Field(ge=0)
    expires: int = Field(ge=0)

    def verify_key(self) -> VerifyKey:
        """The certified public key (raises if it does not match ``key_id``)."""
        key = VerifyKey.from_bytes(b64decode(self.public_key))
        if key.key_id != self.key_id:
            raise ProtocolError("certificate key_id does not match its key")
        return key


class RevocationList(BaseModel):
    """A root-signed, versioned list of key ids never to be trusted again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec_version: SpecVersion = 1
    version: int = Field(ge=1)
    issued_at: int = Field(ge=0)
    revoked_key_ids: Annotated[tuple[Hex256, ...], JSON_ARRAY] = Field(  # J2: a JSON array
        default=(), max_length=1000
    )


def sign_envelope(
    payload_type: str,
    payload: bytes,
    key: SigningKey,
    *,
    certificate: Envelope | None = None,
    revocations: Envelope | None = None,
) -> Envelope:
    """Sign ``payload`` as ``payload_type`` with ``key``."""
    return Envelope(
        payload_type=payload_type,
        payload=b64encode(payload),
        keyid=key.verify_key.key_id,
        sig=b64encode(key.sign(pae(payload_type, payload))),
        certificate=certificate,
        revocations=revocations,
    )


def certify_key(
    root: SigningKey, key: VerifyKey, role: Role, *, issued_at: int, expires: int
) -> Envelope:
    """Root-sign a :class:`KeyCertificate` for ``key``."""
    cert = KeyCertificate(
        role=role,
        key_id=key.key_id,
        public_key=b64encode(key.to_bytes()),
        issued_at=issued_at,
        expires=expires,
    )
    return sign_envelope(CERTIFICATE_TYPE, canonical_json(cert.model_dump(mode="json")), root)


def sign_revocations(root: SigningKey, revocations: RevocationList) -> Envelope:
    """Root-sign a :class:`RevocationList`."""
    payload = canonical_json(revocations.model_dump(mode="json"))
    return sign_envelope(REVOCATIONS_TYPE, payload, root)


def open_envelope(envelope: Envelope, key: VerifyKey, payload_type: str) -> bytes:
    """Check type, key id and signature of ``envelope`` under ``key``; return the payload.

    Raises:
        ProtocolError: wrong payload type (a document of one kind replayed as another).
        UntrustedKeyError: the envelope names a different signer than ``key``.
        BadSignatureError: the signature does not verify.
    """
    if envelope.payload_type != payload_type:
        raise ProtocolError("unexpected payload type")
    if envelope.keyid != key.key_id:
        raise UntrustedKeyError("signed by an unexpected key")
    payload = envelope.payload_bytes()
    key.verify(b64decode(envelope.sig), pae(payload_type, payload))
    return payload


@dataclass(frozen=True)
class TrustStore:
    """What a device trusts: the pinned root key and the newest revocation list it has seen.

    Immutable: updates return a new store that the caller persists.
    """

    root: VerifyKey
    revocations: RevocationList | None = None
    certificates: tuple[Envelope, ...] = ()

    def with_revocations(self, envelope: Envelope) -> TrustStore:
        """Return a store using ``envelope``'s list if it is root-signed and newer.

        Raises:
            BadSignatureError, UntrustedKeyError, ProtocolError: not a root-signed list.
            NonCanonicalPayloadError: root-signed, but not canonical JSON (rule J1).
            RollbackAttackError: older than the list already held (rule T5).
        """
        payload = open_envelope(envelope, self.root, REVOCATIONS_TYPE)  # signature first
        new = parse_signed_model(RevocationList, payload, what="revocation list")  # J1, J2
        if self.revocations is not None:
            if new.version < self.revocations.version:
                raise RollbackAttackError("older revocation list")
            if new.version == self.revocations.version:
                return self
        return replace(self, revocations=new)

    def absorb_revocations(self, envelope: Envelope | None) -> TrustStore:
        """Like :meth:`with_revocations`, but keep the current list if ``envelope`` is bad.

        Used for lists piggy-backed on manifests: an invalid or stale list can never
        weaken trust, so it is ignored rather than failing the manifest.
        """
        if envelope is None:
            return self
        try:
            return self.with_revocations(envelope)
        except SecurityError:
            return self
        except ProtocolError:
            return self

    def is_revoked(self, key_id: str) -> bool:
        """Whether ``key_id`` is on the held revocation list."""
        return self.revocations is not None and key_id in self.revocations.revoked_key_ids


def _find_certificate(envelope: Envelope, trust: TrustStore) -> tuple[Envelope, KeyCertificate]:
    candidates = ([envelope.certificate] if envelope.certificate else []) + list(trust.certificates)
    for cert_env in candidates:
        if cert_env.payload_type != CERTIFICATE_TYPE:
            continue
        # T2 needs the key id before T4 can check the root signature, so a certificate is
        # parsed before it is verified: with the same strict J1/J2 parser, over the same
        # exact bytes that T4 then verifies (a non-canonical one is refused right here).
        cert = parse_signed_model(KeyCertificate, cert_env.payload_bytes(), what="certificate")
        if cert.key_id == envelope.keyid:
            return cert_env, cert
    raise UnknownKeyError("no certificate for the signing key")


def verify_signed(
    envelope: Envelope, trust: TrustStore, *, payload_type: str, role: Role, now: int
) -> tuple[bytes, KeyCertificate]:
    """Verify a role-signed envelope; return its payload and the signer's certificate.

    Checks, in order (each raising its own error):

    - T1 the payload type is the one expected (``ProtocolError``);
    - T2 a certificate exists for the signing key id (``UnknownKeyError``);
    - T3 the signature verifies under the certified key (``BadSignatureError``);
    - T4 the certificate is signed by the pinned root, is for ``role`` and is valid at
      ``now`` (``UntrustedKeyError``);
    - T5 the key is not on the root-signed revocation list (``RevokedKeyError``).

    A certificate that is not canonical JSON is refused at T2 (``NonCanonicalPayloadError``,
    rule J1). The returned payload is verified but not parsed: callers parse it with
    :func:`~shared.artifacts.canonical.parse_signed_model` (J1, J2).
    """
    if envelope.payload_type != payload_type:  # T1
        raise ProtocolError("unexpected payload type")
    cert_env, cert = _find_certificate(envelope, trust)  # T2
    try:
        signer = cert.verify_key()
    except CryptoError as exc:
        raise UntrustedKeyError("certificate holds an invalid key") from exc
    payload = envelope.payload_bytes()
    signer.verify(b64decode(envelope.sig), pae(payload_type, payload))  # T3
    try:  # T4: the delegation itself must come from the pinned root
        open_envelope(cert_env, trust.root, CERTIFICATE_TYPE)
    except BadSignatureError as exc:
        raise UntrustedKeyError("key certificate not signed by the pinned root") from exc
    if cert.role is not role:
        raise UntrustedKeyError(f"key is certified for {cert.role}, not {role}")
    if not cert.issued_at <= now < cert.expires:
        raise UntrustedKeyError("key certificate not valid now", code="key_certificate_expired")
    if trust.is_revoked(cert.key_id):  # T5
        raise RevokedKeyError("signing key is revoked")
    return payload, cert
