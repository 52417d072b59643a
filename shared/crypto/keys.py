"""Key types: Ed25519 signing keys and X25519 key-agreement keys, with (de)serialization.

These wrappers are the only key objects the rest of fedge sees; the ``cryptography``
primitives stay inside ``shared.crypto``. Parsing failures raise :class:`CryptoError`
with a deliberately vague message (the cryptography recipe layer's habit): a caller gets
"invalid key", never which byte was wrong.

Serialization is to bytes only (raw 32 bytes, or PEM); file I/O lives in ``cloud.keys``
and ``edge.keystore`` because ``shared`` does no I/O.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from shared.errors import BadSignatureError, CryptoError

__all__ = ["PrivateKey", "PublicKey", "SigningKey", "VerifyKey", "key_id"]

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_PEM = serialization.Encoding.PEM


def key_id(raw_public_key: bytes) -> str:
    """Return the key id of a raw 32-byte public key: lowercase hex sha256 of its bytes.

    A key id names a key in envelopes and certificates; it is a hash so it cannot be
    confused with the key itself and is trivial to compute in firmware.
    """
    return hashlib.sha256(raw_public_key).hexdigest()


def _load_private_pem(data: bytes, password: bytes | None) -> object:
    try:
        return serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise CryptoError("invalid key") from exc


def _private_pem(
    key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey, pw: bytes | None
) -> bytes:
    # PKCS8 so `openssl pkey` can read the files; optional passphrase for the offline root.
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    )
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, enc)


class VerifyKey:
    """An Ed25519 public key that verifies signatures."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_bytes(cls, raw: bytes) -> VerifyKey:
        """Parse a raw 32-byte Ed25519 public key."""
        try:
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, TypeError) as exc:
            raise CryptoError("invalid key") from exc

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """Parse a PEM SubjectPublicKeyInfo Ed25519 public key."""
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise CryptoError("invalid key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise CryptoError("invalid key")
        return cls(key)

    def to_bytes(self) -> bytes:
        """Return the raw 32-byte public key."""
        return self._key.public_bytes(_RAW, _RAW_PUB)

    def to_pem(self) -> bytes:
        """Return the key as PEM SubjectPublicKeyInfo."""
        return self._key.public_bytes(_PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_id(self) -> str:
        """The key id (hex sha256 of the raw public key)."""
        return key_id(self.to_bytes())

    def verify(self, signature: bytes, data: bytes) -> None:
        """Verify ``signature`` over ``data``.

        Raises:
            BadSignatureError: the signature does not verify (any reason).
        """
        try:
            self._key.verify(signature, data)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise BadSignatureError("signature does not verify") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id[:16]})"


class SigningKey:
    """An Ed25519 private key. Its repr never shows key material."""

    __slots__ = ("_key",)

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a fresh key from the OS CSPRNG."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> SigningKey:
        """Parse a raw 32-byte Ed25519 seed."""
        try:
            return cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw))
        except (ValueError, TypeError) as exc:
            raise CryptoError("invalid key") from exc

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        """Parse a PKCS8 PEM Ed25519 private key (optionally passphrase-protected)."""
        key = _load_private_pem(data, password)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CryptoError("invalid key")
        return cls(key)

    def to_bytes(self) -> bytes:
        """Return the raw 32-byte seed. Handle with care."""
        return self._key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())

    def to_pem(self, password: bytes | None = None) -> bytes:
        """Return PKCS8 PEM, encrypted with ``password`` when given."""
        return _private_pem(self._key, password)

    @property
    def verify_key(self) -> VerifyKey:
        """The matching public key."""
        return VerifyKey(self._key.public_key())

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.verify_key.key_id[:16]})"


class PublicKey:
    """An X25519 public key: what a sender seals to."""

    __slots__ = ("_key",)

    def __init__(self, key: x25519.X25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_bytes(cls, raw: bytes) -> PublicKey:
        """Parse a raw 32-byte X25519 public key."""
        try:
            return cls(x25519.X25519PublicKey.from_public_bytes(raw))
        except (ValueError, TypeError) as exc:
            raise CryptoError("invalid key") from exc

    def to_bytes(self) -> bytes:
        """Return the raw 32-byte public key."""
        return self._key.public_bytes(_RAW, _RAW_PUB)

    @property
    def key_id(self) -> str:
        """The key id (hex sha256 of the raw public key)."""
        return key_id(self.to_bytes())

    @property
    def primitive(self) -> x25519.X25519PublicKey:
        """The underlying primitive; for ``shared.crypto`` internals only."""
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"PublicKey({self.key_id[:16]})"


class PrivateKey:
    """An X25519 private key: what a recipient opens sealed boxes with."""

    __slots__ = ("_key",)

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        """Create a fresh key from the OS CSPRNG."""
        return cls(x25519.X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> PrivateKey:
        """Parse a raw 32-byte X25519 private key."""
        try:
            return cls(x25519.X25519PrivateKey.from_private_bytes(raw))
        except (ValueError, TypeError) as exc:
            raise CryptoError("invalid key") from exc

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> PrivateKey:
        """Parse a PKCS8 PEM X25519 private key."""
        key = _load_private_pem(data, password)
        if not isinstance(key, x25519.X25519PrivateKey):
            raise CryptoError("invalid key")
        return cls(key)

    def to_bytes(self) -> bytes:
        """Return the raw 32-byte private key. Handle with care."""
        return self._key.private_bytes(_RAW, _RAW_PRIV, serialization.NoEncryption())

    def to_pem(self, password: bytes | None = None) -> bytes:
        """Return PKCS8 PEM, encrypted with ``password`` when given."""
        return _private_pem(self._key, password)

    @property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(self._key.public_key())

    def exchange(self, peer: PublicKey) -> bytes:
        """Raw X25519 shared secret; for ``shared.crypto`` internals only."""
        try:
            return self._key.exchange(peer.primitive)
        except ValueError as exc:  # all-zero shared secret from a low-order point
            raise CryptoError("decryption failed") from exc

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public_key.key_id[:16]})"
