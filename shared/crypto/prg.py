"""Secure-aggregation primitives: pairwise keys, the mask PRG, packing mod a power of two.

Masks (Bell et al. 2020, SecAgg+) must be indistinguishable from uniform to anyone without
the seed. Flower 1.41 folds its 32-byte shared key into a 32-bit ``numpy.random`` seed, so a
2^32 search recovers a mask; here every mask is keyed by the **whole** secret:

``HKDF-SHA256(secret, info=context) → 256-bit ChaCha20 key → keystream → uint32 words``,
each word reduced mod ``M = 2**bits``. ``M`` is a power of two that divides ``2**32``, so
the reduction is exactly uniform (no rejection needed). ``context`` binds a mask to its
run, round and purpose, so two masks never share a keystream.

Masked vectors travel packed to exactly ``bits`` bits per value: uint8/uint16 when ``bits``
is 8/16, else bit-packed (:func:`pack_mod` / :func:`unpack_mod`) — never more than uint16
for ``M <= 2**16``.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from shared.crypto.keys import PrivateKey, PublicKey
from shared.errors import CryptoError

__all__ = [
    "MAX_MASK_BITS",
    "agree",
    "derive_key",
    "mask_stream",
    "pack_mod",
    "packed_nbytes",
    "unpack_mod",
]

#: Largest modulus exponent (values travel in uint32 words).
MAX_MASK_BITS = 32
_NONCE = bytes(16)  # each derived key is used for one stream only, so a fixed nonce is safe


def derive_key(secret: bytes, context: bytes) -> bytes:
    """A 256-bit key from the whole ``secret`` (HKDF-SHA256), bound to ``context``."""
    if len(secret) < 16:
        raise CryptoError("secret too short")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(secret)


def agree(private: PrivateKey, peer: PublicKey, context: bytes) -> bytes:
    """The pairwise key of ``private`` and ``peer``: X25519 then :func:`derive_key`.

    Symmetric: ``agree(a, B) == agree(b, A)``, so both ends derive the same mask.
    """
    return derive_key(private.exchange(peer), context)


def mask_stream(key: bytes, count: int, bits: int) -> NDArray[np.uint32]:
    """``count`` values uniform over ``[0, 2**bits)`` from the ChaCha20 keystream of ``key``.

    Raises:
        CryptoError: a key that is not 32 bytes, or ``bits`` outside [1, 32].
    """
    if len(key) != 32:
        raise CryptoError("mask key must be 32 bytes")
    if not 1 <= bits <= MAX_MASK_BITS:
        raise CryptoError("mask bits out of range")
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * count))
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
    if bits < MAX_MASK_BITS:
        words &= np.uint32((1 << bits) - 1)
    return words


def _container(bits: int) -> type[np.unsignedinteger] | None:
    # Exactly 8 or 16 bits: the native dtype is already tight. Anything else is bit-packed,
    # so M = 2**12 (10 devices at 8 bits) costs 12 bits per value, not uint16's 16.
    if bits == 8:
        return np.uint8
    if bits == 16:
        return np.uint16
    return None


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes :func:`pack_mod` produces for ``count`` values of ``bits`` bits."""
    dtype = _container(bits)
    if dtype is not None:
        return count * np.dtype(dtype).itemsize
    return (count * bits + 7) // 8


def pack_mod(values: NDArray[np.uint32], bits: int) -> bytes:
    """Values in ``[0, 2**bits)`` as bytes: uint8/uint16 (little-endian) for 8/16 bits, else
    bit-packed (little-endian bit order)."""
    dtype = _container(bits)
    if dtype is not None:
        return values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    as_bits = np.unpackbits(
        values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1, bitorder="little"
    )[:, :bits]
    return np.packbits(as_bits.reshape(-1), bitorder="little").tobytes()


def unpack_mod(data: bytes, count: int, bits: int) -> NDArray[np.uint32]:
    """Inverse of :func:`pack_mod`.

    Raises:
        CryptoError: ``data`` is not exactly the packed size of ``count`` values.
    """
    if len(data) != packed_nbytes(count, bits):
        raise CryptoError("packed vector has the wrong size")
    dtype = _container(bits)
    if dtype is not None:
        out = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.uint32)
        if int(out.max(initial=0)) >= 1 << bits:
            raise CryptoError("packed value out of range")
        return out
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    per_value = flat[: count * bits].reshape(count, bits)
    padded = np.zeros((count, 32), dtype=np.uint8)
    padded[:, :bits] = per_value
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").reshape(-1).astype(np.uint32)
