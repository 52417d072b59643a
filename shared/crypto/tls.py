"""X.509 material for the broker's TLS: a project CA, server and client certificates.

Pure: every function takes ``now`` and returns PEM bytes; ``cloud.keys`` writes the files.
The broker takes a client's identity from its certificate's CN (``use_identity_as_username``),
so a CN is always checked against the identifier grammar, and revocation of a client
certificate is a CRL (:func:`make_crl`) the broker loads with ``crlfile``.
Keys are ECDSA P-256 because every TLS stack (Mosquitto's OpenSSL, MCU TLS libraries such
as mbedTLS) supports it, unlike Ed25519 certificates.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import CryptoError
from shared.identifiers import IdentifierKind, check_identifier

__all__ = [
    "TlsIdentity",
    "cert_common_name",
    "cert_serial",
    "issue_client_cert",
    "issue_server_cert",
    "make_ca",
    "make_crl",
]


@dataclass(frozen=True, repr=False)
class TlsIdentity:
    """A certificate and its private key, both PEM. The repr hides the key."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "TlsIdentity(<cert>, <hidden key>)"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(ca: TlsIdentity) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError as exc:
        raise CryptoError("invalid key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("invalid key")
    return cert, key


def make_ca(common_name: str, *, now: datetime, days: int = 3650) -> TlsIdentity:
    """Create a self-signed CA (path length 0: it signs leaves only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return TlsIdentity(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _leaf(
    ca: TlsIdentity,
    common_name: str,
    *,
    now: datetime,
    days: int,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName],
) -> TlsIdentity:
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return TlsIdentity(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server_cert(
    ca: TlsIdentity, hosts: list[str], *, now: datetime, days: int = 825
) -> TlsIdentity:
    """Issue a broker server certificate valid for ``hosts`` (DNS names or IP literals)."""
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    return _leaf(ca, hosts[0], now=now, days=days, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san)


def issue_client_cert(
    ca: TlsIdentity, common_name: str, *, now: datetime, days: int = 825
) -> TlsIdentity:
    """Issue a client certificate whose CN is the MQTT user (device id or system account).

    The broker uses the CN as the MQTT username and client id, so it must be a valid
    identifier (an embedded NUL or newline would make it a different name to OpenSSL,
    Mosquitto and the ACL file).

    Raises:
        InvalidIdentifierError: ``common_name`` outside the identifier grammar.
    """
    check_identifier(common_name, IdentifierKind.DEVICE)
    return _leaf(ca, common_name, now=now, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH, san=[])


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CryptoError("invalid certificate") from exc


def cert_serial(cert_pem: bytes) -> int:
    """The serial number of a PEM certificate (what a CRL lists)."""
    return int(_load_cert(cert_pem).serial_number)


def cert_common_name(cert_pem: bytes) -> str:
    """The subject CN of a PEM certificate (the broker's username for its holder)."""
    attrs = _load_cert(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise CryptoError("certificate has no single common name")
    return str(attrs[0].value)


def make_crl(
    ca: TlsIdentity, revoked_serials: list[int], *, now: datetime, days: int = 3650
) -> bytes:
    """A CA-signed CRL (PEM) listing ``revoked_serials``; may be empty.

    ``next_update`` is far ahead on purpose: OpenSSL refuses *every* client once the CRL
    it checks against is past ``next_update``, so a CRL that lapsed would lock the whole
    fleet out. The CRL is regenerated at every broker reconfiguration anyway.
    """
    ca_cert, ca_key = _load_ca(ca)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=days))
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=5))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)
