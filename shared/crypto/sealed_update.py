"""Sealed, signed model updates: for strategies that must see each update (trimmed mean, median).

Without SecAgg+ the coordinator reads individual updates, so each one travels

* **signed** by the device's Ed25519 key — only an enrolled device can contribute, and
  nobody can pass off a modified or foreign update as that device's;
* **sealed** to the coordinator's X25519 key (:func:`shared.crypto.seal`) — nobody on the
  path (SuperLink operator, proxy, log) reads it;
* **bound** to ``(run id, round, device id)`` through the associated data of the seal *and*
  the signed bytes — a valid update replayed into another run or round, or re-attributed to
  another device, fails to open.

Wire form (the bytes in the reply's ``update.sealed``)::

    seal(coordinator, signature (64) || payload, ad)
    ad        = "fedge/v1/update" 0x00 run 0x00 round 0x00 device
    signature = Ed25519(device, "fedge/v1/update-sig" 0x00 ad 0x00 sha256(payload))

Signing inside the box keeps the signature (which names its signer) away from observers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from shared.crypto.keys import PrivateKey, PublicKey, SigningKey, VerifyKey
from shared.crypto.seal import open_sealed, seal
from shared.errors import BadSignatureError, CryptoError, UnknownKeyError

__all__ = ["SIGNATURE_BYTES", "open_update", "seal_update", "update_associated_data"]

SIGNATURE_BYTES = 64
_AD_TAG = b"fedge/v1/update"
_SIG_TAG = b"fedge/v1/update-sig"


def update_associated_data(run_id: str, server_round: int, device_id: str) -> bytes:
    """The context an update is bound to (no field may contain a NUL byte)."""
    fields = [run_id, str(int(server_round)), device_id]
    if any("\x00" in f for f in fields):
        raise CryptoError("invalid update context")
    return b"\x00".join([_AD_TAG, *(f.encode() for f in fields)])


def _signed_bytes(ad: bytes, payload: bytes) -> bytes:
    return b"\x00".join([_SIG_TAG, ad, hashlib.sha256(payload).digest()])


def seal_update(
    payload: bytes,
    *,
    coordinator: PublicKey,
    signer: SigningKey,
    run_id: str,
    server_round: int,
    device_id: str,
) -> bytes:
    """Sign ``payload`` as ``device_id`` and seal it to the coordinator for one run/round."""
    ad = update_associated_data(run_id, server_round, device_id)
    signature = signer.sign(_signed_bytes(ad, payload))
    return seal(coordinator, signature + payload, ad)


def open_update(
    sealed: bytes,
    *,
    coordinator: PrivateKey,
    devices: Mapping[str, VerifyKey],
    run_id: str,
    server_round: int,
    device_id: str,
) -> bytes:
    """Open and verify an update claimed to come from ``device_id`` for this run and round.

    Raises:
        UnknownKeyError: ``device_id`` is not an enrolled (or not a current) device.
        CryptoError: not sealed to this coordinator, tampered, or bound to another run,
            round or device (deliberately indistinguishable: replay looks like tampering).
        BadSignatureError: opened, but not signed by ``device_id``'s key.
    """
    key = devices.get(device_id)
    if key is None:
        raise UnknownKeyError("update from an unknown device")
    ad = update_associated_data(run_id, server_round, device_id)
    plaintext = open_sealed(coordinator, sealed, ad)
    if len(plaintext) < SIGNATURE_BYTES:
        raise BadSignatureError("update is not signed")
    signature, payload = plaintext[:SIGNATURE_BYTES], plaintext[SIGNATURE_BYTES:]
    key.verify(signature, _signed_bytes(ad, payload))
    return payload
