"""Sealed boxes: X25519 ECDH + HKDF-SHA256 + AES-256-GCM with associated data.

Used to wrap a per-artifact content key to one device, and (later) to seal model updates
to the coordinator. Construction, for a recipient public key ``R``:

1. ephemeral X25519 key pair ``(e, E)``; ``shared = X25519(e, R)``
2. ``k = HKDF-SHA256(ikm=shared, salt=E || R, info="fedge/v1/seal", length=32)``
   (both public keys in the salt bind the box to this exchange, as in libsodium/HPKE)
3. ``box = AES-256-GCM(k, nonce, plaintext, associated_data)``

Wire form: ``0x01 || E (32) || nonce (12) || ciphertext || tag (16)``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.crypto.aead import OVERHEAD, ContentKey, decrypt, encrypt
from shared.crypto.keys import PrivateKey, PublicKey
from shared.errors import CryptoError

__all__ = ["SEAL_OVERHEAD", "SEAL_VERSION", "open_sealed", "seal"]

SEAL_VERSION = 1
_INFO = b"fedge/v1/seal"
_PUB = 32
SEAL_OVERHEAD = 1 + _PUB + OVERHEAD


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> ContentKey:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO)
    return ContentKey(hkdf.derive(shared))


def seal(recipient: PublicKey, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt ``plaintext`` so only the holder of ``recipient``'s private key can open it."""
    eph = PrivateKey.generate()
    eph_pub = eph.public_key.to_bytes()
    key = _derive(eph.exchange(recipient), eph_pub, recipient.to_bytes())
    return bytes([SEAL_VERSION]) + eph_pub + encrypt(key, plaintext, associated_data)


def open_sealed(private: PrivateKey, sealed: bytes, associated_data: bytes) -> bytes:
    """Open a box made by :func:`seal`.

    Raises:
        CryptoError: not for this key, wrong associated data, tampered or malformed box
            (deliberately indistinguishable).
    """
    if len(sealed) < SEAL_OVERHEAD or sealed[0] != SEAL_VERSION:
        raise CryptoError("decryption failed")
    eph_pub = sealed[1 : 1 + _PUB]
    try:
        shared = private.exchange(PublicKey.from_bytes(eph_pub))
    except CryptoError as exc:  # keep the message vague whatever failed
        raise CryptoError("decryption failed") from exc
    key = _derive(shared, eph_pub, private.public_key.to_bytes())
    return decrypt(key, sealed[1 + _PUB :], associated_data)
