"""AES-256-GCM content encryption with associated data.

Wire form of a box: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. Nonces are
random: a content key is fresh per artifact, and random 96-bit nonces keep even an
accidental key reuse far from the birthday bound for the few thousand boxes one key
ever protects.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import CryptoError

__all__ = ["KEY_BYTES", "NONCE_BYTES", "OVERHEAD", "TAG_BYTES", "ContentKey", "decrypt", "encrypt"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


class ContentKey:
    """A 256-bit AES-GCM key. Its repr never shows the key."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise CryptoError("invalid key")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls) -> ContentKey:
        """A fresh key from the OS CSPRNG."""
        return cls(os.urandom(KEY_BYTES))

    def to_bytes(self) -> bytes:
        """The raw 32 bytes. Handle with care."""
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContentKey) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return "ContentKey(<hidden>)"


def encrypt(key: ContentKey, plaintext: bytes, associated_data: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext``, binding ``associated_data``.

    Returns:
        ``nonce || ciphertext || tag``.
    """
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key.to_bytes()).encrypt(nonce, plaintext, associated_data)


def decrypt(key: ContentKey, box: bytes, associated_data: bytes) -> bytes:
    """Open a box made by :func:`encrypt` under the same key and associated data.

    Raises:
        CryptoError: wrong key, wrong associated data, truncated or tampered box.
    """
    if len(box) < OVERHEAD:
        raise CryptoError("decryption failed")
    try:
        return AESGCM(key.to_bytes()).decrypt(box[:NONCE_BYTES], box[NONCE_BYTES:], associated_data)
    except InvalidTag as exc:
        raise CryptoError("decryption failed") from exc
