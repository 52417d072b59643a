"""SuperNode authentication keys for Flower's Deployment Engine.

Flower 1.41 authenticates SuperNodes with a NIST elliptic-curve key pair in OpenSSH
encoding: the SuperNode signs with the private key (``--auth-supernode-private-key``)
and the SuperLink only admits public keys registered with ``flwr supernode register``.
The device's Ed25519 signing key cannot be reused because Flower accepts NIST curves only,
so each enrolled device gets a dedicated P-384 key here.

Pure: returns bytes; ``cloud.keys`` writes them into the enrollment bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import CryptoError

__all__ = ["NodeAuthKey", "make_node_auth_key", "node_auth_public_from_private"]


@dataclass(frozen=True, repr=False)
class NodeAuthKey:
    """A SuperNode key pair: OpenSSH private key and ``ecdsa-sha2-nistp384 ...`` public line."""

    private_openssh: bytes
    public_openssh: bytes

    def __repr__(self) -> str:
        return "NodeAuthKey(<hidden key>)"


def make_node_auth_key() -> NodeAuthKey:
    """Generate a P-384 key pair in the encodings Flower's CLIs read."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return NodeAuthKey(private, _public_openssh(key.public_key()))


def node_auth_public_from_private(private_openssh: bytes) -> bytes:
    """Derive the OpenSSH public line of a SuperNode private key.

    Raises:
        CryptoError: the bytes are not an OpenSSH elliptic-curve private key.
    """
    try:
        key = serialization.load_ssh_private_key(private_openssh, password=None)
    except (ValueError, TypeError) as exc:
        raise CryptoError("invalid key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("invalid key")
    return _public_openssh(key.public_key())


def _public_openssh(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
