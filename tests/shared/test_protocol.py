"""Wire protocol: topics, message models, the bounded codec (fuzzed) and deduplication."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ProtocolError
from shared.protocol import topics
from shared.protocol.codec import (
    MAX_PAYLOAD_BYTES,
    decode_message,
    decode_message_as,
    encode_message,
)
from shared.protocol.dedupe import Deduplicator
from shared.protocol.messages import (
    DeviceState,
    LatencyStats,
    MessageKind,
    StatusMessage,
    TelemetryMessage,
)


def _telemetry(**kw: object) -> TelemetryMessage:
    base: dict[str, object] = dict(
        device_id="cam-1",
        sent_at=1_700_000_000.0,
        interval_s=30.0,
        model_version="v3",
        requests=10,
        errors=1,
        requests_total=100,
        latency=LatencyStats(count=9, p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, max_ms=4.0),
        cpu_percent=12.5,
        memory_rss_bytes=50_000_000,
        memory_percent=40.0,
        uptime_s=12.0,
    )
    base.update(kw)
    return TelemetryMessage.model_validate(base)


# --- topics -----------------------------------------------------------------------------


def test_topics_follow_the_contract() -> None:
    assert topics.device_status("cam-1") == "fedge/v1/devices/cam-1/status"
    assert topics.device_telemetry("cam-1") == "fedge/v1/devices/cam-1/telemetry"
    assert topics.device_manifest("cam-1") == "fedge/v1/devices/cam-1/manifest"
    assert topics.device_cmd("cam-1") == "fedge/v1/devices/cam-1/cmd"
    assert topics.group_cmd("home") == "fedge/v1/groups/home/cmd"
    aid = "ab" * 16
    assert topics.artifact_chunk(aid, 7) == f"fedge/v1/artifacts/{aid}/chunks/7"
    assert topics.artifact_chunks(aid) == f"fedge/v1/artifacts/{aid}/chunks/+"
    assert topics.device_requests("cam-1") == "fedge/v1/devices/cam-1/requests"
    assert topics.all_devices(topics.DeviceLeaf.STATUS) == "fedge/v1/devices/+/status"


@pytest.mark.parametrize(
    "bad", ["", "a/b", "+", "#", "cam 1", "../x", "a" * 200, "é", "cam-1\n", "cam\x00", "-x"]
)
def test_topic_segments_cannot_escape_their_level(bad: str) -> None:
    with pytest.raises(ProtocolError):
        topics.device_status(bad)


def test_negative_chunk_index_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        topics.artifact_chunk("ab" * 16, -1)


def test_parse_device_topic_round_trips() -> None:
    parsed = topics.parse_device_topic(topics.device_telemetry("hub-7"))
    assert (parsed.device_id, parsed.leaf) == ("hub-7", topics.DeviceLeaf.TELEMETRY)


@pytest.mark.parametrize(
    "bad", ["fedge/v1/devices/x", "fedge/v2/devices/x/status", "fedge/v1/devices/x/bogus"]
)
def test_parse_rejects_foreign_topics(bad: str) -> None:
    with pytest.raises(ProtocolError):
        topics.parse_device_topic(bad)


# --- messages and codec ------------------------------------------------------------------


def test_status_round_trip_keeps_every_field() -> None:
    msg = StatusMessage(
        device_id="cam-1", sent_at=5.0, state=DeviceState.ONLINE, model_version="v1", slot="a"
    )
    decoded = decode_message(encode_message(msg))
    assert decoded == msg
    assert isinstance(decoded, StatusMessage)


def test_telemetry_round_trip_dispatches_on_kind() -> None:
    msg = _telemetry()
    decoded = decode_message(encode_message(msg))
    assert isinstance(decoded, TelemetryMessage)
    assert decoded == msg
    assert json.loads(encode_message(msg))["kind"] == "telemetry"


def test_every_message_gets_a_distinct_msg_id() -> None:
    a, b = _telemetry(), _telemetry()
    assert a.msg_id != b.msg_id


def test_messages_are_frozen() -> None:
    msg = _telemetry()
    with pytest.raises(ValueError):
        msg.requests = 5  # type: ignore[misc]


def test_decode_as_rejects_the_wrong_kind() -> None:
    data = encode_message(_telemetry())
    assert decode_message_as(data, TelemetryMessage).kind is MessageKind.TELEMETRY
    with pytest.raises(ProtocolError, match="expected a StatusMessage"):
        decode_message_as(data, StatusMessage)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'{"kind": "nope"}',
        b'{"kind": "status"}',
        b"[" * 10_000 + b"]" * 10_000,
        json.dumps({**json.loads(encode_message(_telemetry())), "extra": 1}).encode(),
        json.dumps({**json.loads(encode_message(_telemetry())), "requests": -1}).encode(),
        json.dumps({**json.loads(encode_message(_telemetry())), "v": 2}).encode(),
        json.dumps({**json.loads(encode_message(_telemetry())), "device_id": "a/#"}).encode(),
        b"\xff\xfe\x00garbage",
    ],
)
def test_malformed_payloads_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_message(payload)


def test_oversized_payload_is_rejected_before_parsing() -> None:
    payload = b" " * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(ProtocolError, match="over the"):
        decode_message(payload)


def test_encoding_over_the_limit_is_refused() -> None:
    msg = StatusMessage(device_id="d", sent_at=0, state=DeviceState.DEGRADED, last_error="x")
    assert len(encode_message(msg)) < MAX_PAYLOAD_BYTES
    with pytest.raises(ValueError):  # the model itself caps free text well under the limit
        StatusMessage(device_id="d", sent_at=0, state=DeviceState.DEGRADED, last_error="x" * 2000)


def test_non_bytes_input_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_message("a str, not bytes")  # type: ignore[arg-type]


def test_error_message_does_not_echo_the_payload() -> None:
    secret = "s3cr3t-value-that-must-not-be-logged"
    with pytest.raises(ProtocolError) as info:
        decode_message(json.dumps({"kind": "status", "device_id": secret}).encode())
    assert secret not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    assert decode_message(encode_message(msg)) == msg


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_json, st.sampled_from(["status", "telemetry", "manifest", None]))
def test_fuzz_json_shaped_garbage_never_crashes(value: object, kind: str | None) -> None:
    if isinstance(value, dict) and kind is not None:
        value = {**value, "kind": kind}
    try:
        msg = decode_message(json.dumps(value).encode())
    except ProtocolError:
        return
    # Anything accepted must survive a round trip unchanged.
    assert decode_message(encode_message(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(list(DeviceState)),
    st.one_of(st.none(), st.text(min_size=1, max_size=128)),
    st.floats(min_value=0, max_value=4e9),
)
def test_fuzz_valid_status_round_trips(state: DeviceState, version: str | None, t: float) -> None:
    msg = StatusMessage(device_id="dev-1", sent_at=t, state=state, model_version=version)
    assert decode_message(encode_message(msg)) == msg


# --- dedupe --------------------------------------------------------------------------------


def test_deduplicator_flags_repeats_within_its_window() -> None:
    dedupe = Deduplicator(capacity=3)
    assert [dedupe.first_time(i) for i in "abca"] == [True, True, True, False]
    dedupe.first_time("d")  # evicts the least recently seen: "b"
    assert dedupe.first_time("b") is True
    assert len(dedupe) == 3
