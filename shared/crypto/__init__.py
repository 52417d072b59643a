"""Safe crypto recipes: the only fedge code that touches ``cryptography.hazmat``.

Callers see key wrappers and a handful of functions, never primitives:

- :func:`sign` / :func:`verify` — Ed25519 over canonical bytes;
- :func:`seal` / :func:`open_sealed` — X25519 + HKDF-SHA256 + AES-256-GCM with associated data;
- :func:`encrypt` / :func:`decrypt` — AES-256-GCM content encryption under a :class:`ContentKey`;
- :mod:`shared.crypto.tls` — PEM certificates for the broker's TLS.

Errors are deliberately vague (:class:`~shared.errors.CryptoError`,
:class:`~shared.errors.BadSignatureError`); time is always passed in as ``now``.
"""

from __future__ import annotations

from shared.crypto.aead import ContentKey, decrypt, encrypt
from shared.crypto.keys import PrivateKey, PublicKey, SigningKey, VerifyKey, key_id
from shared.crypto.seal import open_sealed, seal

__all__ = [
    "ContentKey",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "VerifyKey",
    "decrypt",
    "encrypt",
    "key_id",
    "open_sealed",
    "seal",
    "sign",
    "verify",
]


def sign(key: SigningKey, data: bytes) -> bytes:
    """Return the Ed25519 signature of ``data`` (callers pass canonical bytes)."""
    return key.sign(data)


def verify(key: VerifyKey, signature: bytes, data: bytes) -> None:
    """Verify an Ed25519 signature; raises :class:`~shared.errors.BadSignatureError`."""
    key.verify(signature, data)
