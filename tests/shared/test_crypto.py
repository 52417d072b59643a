"""shared.crypto: sign/verify, seal/open, AEAD, key (de)serialization, TLS material."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.crypto import (
    ContentKey,
    PrivateKey,
    PublicKey,
    SigningKey,
    VerifyKey,
    decrypt,
    encrypt,
    open_sealed,
    seal,
    sign,
    verify,
)
from shared.crypto.tls import issue_client_cert, issue_server_cert, make_ca
from shared.errors import BadSignatureError, CryptoError

AD = b"ad"


def test_sign_verify_roundtrip_and_tamper() -> None:
    key = SigningKey.generate()
    sig = sign(key, b"payload")
    verify(key.verify_key, sig, b"payload")
    with pytest.raises(BadSignatureError):
        verify(key.verify_key, sig, b"payloaD")
    with pytest.raises(BadSignatureError):
        verify(SigningKey.generate().verify_key, sig, b"payload")
    with pytest.raises(BadSignatureError):
        verify(key.verify_key, sig[:-1], b"payload")


def test_key_serialization_roundtrips() -> None:
    sk = SigningKey.generate()
    assert SigningKey.from_bytes(sk.to_bytes()).verify_key == sk.verify_key
    assert SigningKey.from_pem(sk.to_pem()).verify_key == sk.verify_key
    assert SigningKey.from_pem(sk.to_pem(b"pw"), b"pw").verify_key == sk.verify_key
    assert VerifyKey.from_pem(sk.verify_key.to_pem()) == sk.verify_key
    assert VerifyKey.from_bytes(sk.verify_key.to_bytes()) == sk.verify_key
    pk = PrivateKey.generate()
    assert PrivateKey.from_pem(pk.to_pem()).public_key == pk.public_key
    assert PrivateKey.from_bytes(pk.to_bytes()).public_key == pk.public_key
    assert PublicKey.from_bytes(pk.public_key.to_bytes()) == pk.public_key
    assert len(sk.verify_key.key_id) == 64


def test_wrong_key_type_and_passphrase_are_vague_errors() -> None:
    with pytest.raises(CryptoError, match=r"^invalid key$"):
        SigningKey.from_pem(PrivateKey.generate().to_pem())
    with pytest.raises(CryptoError, match=r"^invalid key$"):
        SigningKey.from_pem(SigningKey.generate().to_pem(b"pw"), b"wrong")
    with pytest.raises(CryptoError):
        VerifyKey.from_bytes(b"short")


def test_reprs_never_show_secrets() -> None:
    sk, pk, ck = SigningKey.generate(), PrivateKey.generate(), ContentKey.generate()
    assert sk.to_bytes().hex() not in repr(sk)
    assert pk.to_bytes().hex() not in repr(pk)
    assert repr(ck) == "ContentKey(<hidden>)"


def test_aead_binds_associated_data() -> None:
    key = ContentKey.generate()
    box = encrypt(key, b"secret", AD)
    assert decrypt(key, box, AD) == b"secret"
    for bad_key, bad_box, bad_ad in [
        (ContentKey.generate(), box, AD),
        (key, box, b"other"),
        (key, box[:-1] + bytes([box[-1] ^ 1]), AD),
        (key, box[:10], AD),
    ]:
        with pytest.raises(CryptoError, match=r"^decryption failed$"):
            decrypt(bad_key, bad_box, bad_ad)


def test_seal_open_only_for_recipient_and_ad() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    box = seal(alice.public_key, b"content key", AD)
    assert open_sealed(alice, box, AD) == b"content key"
    assert seal(alice.public_key, b"content key", AD) != box  # fresh ephemeral key
    with pytest.raises(CryptoError, match=r"^decryption failed$"):
        open_sealed(bob, box, AD)
    with pytest.raises(CryptoError, match=r"^decryption failed$"):
        open_sealed(alice, box, b"other ad")
    with pytest.raises(CryptoError, match=r"^decryption failed$"):
        open_sealed(alice, b"\x01" + bytes(32) + box[33:], AD)  # low-order ephemeral point


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_open_sealed_any_bytes_is_typed_error(data: bytes) -> None:
    with pytest.raises(CryptoError):
        open_sealed(PrivateKey.generate(), data, AD)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_key_parsers_any_bytes_are_typed_errors(data: bytes) -> None:
    for parse in (SigningKey.from_pem, VerifyKey.from_pem, PrivateKey.from_pem):
        with pytest.raises(CryptoError):
            parse(data)


def test_tls_chain_verifies() -> None:
    now = datetime.now(UTC)
    ca = make_ca("test CA", now=now)
    server = issue_server_cert(ca, ["127.0.0.1", "localhost"], now=now)
    client = issue_client_cert(ca, "dev-a", now=now)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    for leaf in (server, client):
        cert = x509.load_pem_x509_certificate(leaf.cert_pem)
        cert.verify_directly_issued_by(ca_cert)
        assert b"PRIVATE KEY" in leaf.key_pem and "hidden" in repr(leaf)
    san = x509.load_pem_x509_certificate(server.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)
