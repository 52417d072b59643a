"""Manifests, envelopes, trust and the delivery wire messages."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.artifacts import (
    BaseArtifact,
    Encoding,
    RevocationList,
    manifest_from_bytes,
    manifest_to_bytes,
    sign_revocations,
    verify_manifest,
)
from shared.artifacts.canonical import canonical_json, pae
from shared.artifacts.chunking import MAX_CHUNK_MESSAGE_BYTES
from shared.errors import NonCanonicalPayloadError, ProtocolError, RollbackAttackError
from shared.protocol.codec import (
    MAX_PAYLOAD_BYTES,
    decode_chunk,
    decode_message,
    decode_message_as,
    encode_chunk,
    encode_message,
)
from shared.protocol.commands import Command, CommandAction, sign_command
from shared.protocol.messages import CommandMessage, ManifestMessage, ResendRequest
from shared.protocol.topics import artifact_chunk, device_requests, parse_chunk_topic
from tests.helpers.deltas import NEW_VERSION
from tests.helpers.release import HW, NOW, Fleet, artifact


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


def test_canonical_json_is_sorted_compact_and_rejects_floats() -> None:
    assert canonical_json({"b": 1, "a": [2, "é"]}) == b'{"a":[2,"\\u00e9"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"a": 1.5})
    assert pae("t", b"xy") == b"DSSEv1 1 t 2 xy"


def test_manifest_roundtrip_is_canonical(fleet: Fleet) -> None:
    m = fleet.build(artifact(), 2).manifest
    data = manifest_to_bytes(m)
    assert manifest_from_bytes(data) == m
    assert manifest_to_bytes(manifest_from_bytes(data)) == data
    assert data == canonical_json(json.loads(data))


def test_manifest_consistency_rules(fleet: Fleet) -> None:
    raw = json.loads(manifest_to_bytes(fleet.build(artifact(), 2).manifest))
    for change in (
        {"chunk_count": raw["chunk_count"] + 1},  # M1
        {"chunk_sha256": raw["chunk_sha256"][:-1]},  # M2
        {"encoding": "zstd_delta"},  # M3: a delta needs its base
        {"encoding": "zstd_bytediff"},  # M3
        {"delta_base": {"version": 1, "sha256": "0" * 64, "length": 10}},  # M3: full + base
        {"expires": raw["issued_at"]},
        {"extra": 1},
        {"hardware_ids": ["bad/id"]},
    ):
        with pytest.raises(ProtocolError):
            manifest_from_bytes(canonical_json(raw | change))


@pytest.mark.parametrize("encoding", ["zstd_delta", "zstd_bytediff"])
def test_delta_manifest_needs_its_base(fleet: Fleet, encoding: str) -> None:
    """M3 holds for both delta encodings: a base exactly when the encoding is a delta."""
    old = artifact(20_000, seed=3)
    make = NEW_VERSION[Encoding(encoding)]
    m = fleet.build(make(old), 2, base=BaseArtifact(1, old)).manifest
    assert m.encoding == encoding and m.encoding.is_delta and m.delta_base is not None
    raw = json.loads(manifest_to_bytes(m))
    assert manifest_from_bytes(canonical_json(raw)) == m
    for change in ({"delta_base": None}, {"encoding": "zstd"}):
        with pytest.raises(ProtocolError):
            manifest_from_bytes(canonical_json(raw | change))
    assert not Encoding.ZSTD.is_delta


def test_verify_manifest_happy_path_and_per_device_copy(fleet: Fleet) -> None:
    release = fleet.build(artifact(), 3)
    per_device = release.manifest.for_devices(["dev-a"])
    assert list(per_device.content_keys) == ["dev-a"]
    result = verify_manifest(
        fleet.sign(per_device),
        fleet.trust(),
        device_id="dev-a",
        hardware_id=HW,
        floor_version=2,
        now=NOW,
    )
    assert result.manifest == per_device


def test_signed_manifest_message_fits_mqtt_limit_with_many_devices(fleet: Fleet) -> None:
    big = Fleet(devices={f"dev-{i:03d}": fleet.devices["dev-a"] for i in range(200)})
    release = big.build(artifact(600_000), 2, chunk_size=64 * 1024)
    msg = ManifestMessage(device_id="dev-001", sent_at=NOW, envelope=big.sign(release.manifest))
    data = encode_message(msg)
    assert len(data) < MAX_PAYLOAD_BYTES
    assert decode_message_as(data, ManifestMessage) == msg
    assert all(len(encode_chunk(c)) <= MAX_CHUNK_MESSAGE_BYTES < 128_000 for c in release.chunks)


def test_revocation_list_updates_are_monotonic(fleet: Fleet) -> None:
    v2 = sign_revocations(fleet.root, RevocationList(version=2, issued_at=NOW))
    v1 = sign_revocations(fleet.root, RevocationList(version=1, issued_at=NOW))
    trust = fleet.trust().with_revocations(v2)
    assert trust.with_revocations(v2) is trust
    with pytest.raises(RollbackAttackError):
        trust.with_revocations(v1)
    assert trust.absorb_revocations(v1) is trust  # piggy-backed stale list: ignored


def test_command_and_resend_roundtrip(fleet: Fleet) -> None:
    cmd = Command(
        action=CommandAction.ROLLBACK, device_id="dev-a", seq=5, issued_at=NOW, expires=NOW + 60
    )
    env = sign_command(cmd, fleet.coordinator, certificate=fleet.coordinator_cert)
    msg = CommandMessage(device_id="dev-a", sent_at=NOW, envelope=env)
    assert decode_message(encode_message(msg)) == msg
    req = ResendRequest(device_id="dev-a", sent_at=NOW, artifact_id="0" * 32, missing=(1, 7))
    assert decode_message_as(encode_message(req), ResendRequest) == req
    with pytest.raises(ProtocolError):
        decode_message_as(encode_message(req), ManifestMessage)
    with pytest.raises(ValueError):
        Command(action=CommandAction.ROLLBACK, seq=1, issued_at=NOW, expires=NOW + 1)


def test_topics() -> None:
    assert artifact_chunk("ab" * 16, 3) == f"fedge/v1/artifacts/{'ab' * 16}/chunks/3"
    assert parse_chunk_topic(artifact_chunk("ab" * 16, 3)) == ("ab" * 16, 3)
    assert device_requests("dev-a") == "fedge/v1/devices/dev-a/requests"
    for bad in ("fedge/v1/artifacts/x/chunks/-1", "fedge/v1/devices/a/status", "a/b"):
        with pytest.raises(ProtocolError):
            parse_chunk_topic(bad)
    with pytest.raises(ProtocolError):
        device_requests("dev/+")


def test_oversized_and_empty_payloads_are_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_message(b"{" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ProtocolError):
        decode_message(b"")
    with pytest.raises(ProtocolError):
        decode_chunk(b"FDC1" + bytes(MAX_CHUNK_MESSAGE_BYTES))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoders_any_bytes_give_typed_errors(data: bytes) -> None:
    for decode in (decode_message, decode_chunk, manifest_from_bytes):
        with contextlib.suppress(ProtocolError, NonCanonicalPayloadError):
            decode(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from(["manifest", "command", "resend_request", "x"]),
)
def test_decode_delivery_any_json_gives_typed_errors(value: object, kind: str) -> None:
    doc = value if not isinstance(value, dict) else value | {"kind": kind}
    with contextlib.suppress(ProtocolError):
        decode_message(json.dumps(doc).encode())


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.binary(min_size=1, max_size=4))
def test_chunk_decoder_bit_flips_give_typed_errors(pos: int, junk: bytes) -> None:
    good = encode_chunk(Fleet().build(b"x" * 100, 2, chunk_size=64).chunks[0])
    data = good[:pos] + junk + good[pos + len(junk) :]
    try:
        chunk = decode_chunk(data)
        assert chunk.index < chunk.count
    except ProtocolError:
        pass
