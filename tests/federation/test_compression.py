"""The update codec: round trips, error bounds, byte counts, error feedback, hostile bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.compression import (
    MalformedUpdateError,
    NonFiniteUpdateError,
    decode_update,
    encode_update,
    float32_nbytes,
)


def _delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "features.0.weight": rng.normal(0, 0.05, (16, 1, 3, 3)).astype(np.float32),
        "features.0.bias": rng.normal(0, 0.01, (16,)).astype(np.float32),
        "classifier.1.weight": rng.normal(0, 0.02, (64, 128)).astype(np.float32),
        "scalar": np.float32(0.5) * np.ones((), dtype=np.float32),
    }


def test_fp32_round_trip_is_exact() -> None:
    delta = _delta()
    decoded = decode_update(encode_update(delta, mode="fp32").payload)
    assert list(decoded) == list(delta)
    for name, values in delta.items():
        np.testing.assert_array_equal(decoded[name], values)


def test_int8_round_trip_within_half_a_step_and_a_quarter_of_the_bytes() -> None:
    delta = _delta()
    encoded = encode_update(delta, mode="int8")
    decoded = decode_update(encoded.payload)
    for name, values in delta.items():
        step = float(np.max(np.abs(values))) / 127
        assert np.max(np.abs(decoded[name] - values)) <= step / 2 + 1e-7
        np.testing.assert_allclose(encoded.residual[name], values - decoded[name], atol=1e-7)
    assert encoded.raw_bytes == float32_nbytes(delta) == 4 * sum(v.size for v in delta.values())
    # Issue target: compressed upload <= 0.27x the float32 bytes.
    assert encoded.ratio <= 0.27


def test_zero_tensor_encodes_to_zero() -> None:
    decoded = decode_update(encode_update({"w": np.zeros((3, 3), np.float32)}).payload)
    np.testing.assert_array_equal(decoded["w"], np.zeros((3, 3), np.float32))


def test_topk_keeps_the_largest_entries_and_returns_the_rest_as_residual() -> None:
    values = np.array([0.0, -5.0, 0.1, 3.0, -0.2, 0.05, 4.0, 0.0, 0.3, -0.01], np.float32)
    encoded = encode_update({"w": values}, mode="topk", topk_fraction=0.3)
    decoded = decode_update(encoded.payload)["w"]
    assert set(np.flatnonzero(decoded)) == {1, 3, 6}
    np.testing.assert_allclose(decoded + encoded.residual["w"], values, atol=1e-6)


def test_error_feedback_eventually_sends_everything() -> None:
    """Sum of what was sent plus the final residual equals the sum of the true deltas."""
    rng = np.random.default_rng(1)
    residual = None
    sent = np.zeros(200, np.float32)
    truth = np.zeros(200, np.float32)
    for _ in range(20):
        delta = rng.normal(0, 1, 200).astype(np.float32)
        truth += delta
        enc = encode_update({"w": delta}, mode="topk", topk_fraction=0.05, residual=residual)
        sent += decode_update(enc.payload)["w"]
        residual = enc.residual
    assert residual is not None
    np.testing.assert_allclose(sent + residual["w"], truth, atol=1e-3)


def test_topk_payload_is_smaller_than_int8() -> None:
    delta = _delta()
    topk = encode_update(delta, mode="topk", topk_fraction=0.05)
    int8 = encode_update(delta, mode="int8")
    assert len(topk.payload) < len(int8.payload) / 3


def test_int8_refuses_non_finite_values() -> None:
    with pytest.raises(NonFiniteUpdateError):
        encode_update({"w": np.array([1.0, np.nan], np.float32)}, mode="int8")


def test_fp32_carries_non_finite_values_for_the_server_to_reject() -> None:
    decoded = decode_update(
        encode_update({"w": np.array([np.inf], np.float32)}, mode="fp32").payload
    )
    assert not np.isfinite(decoded["w"]).any()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: b"XXXX" + p[4:],
        lambda p: p[:-1],
        lambda p: p + b"\x00",
    ],
    ids=["magic", "truncated", "trailing"],
)
def test_corrupted_payloads_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    payload = encode_update(_delta(), mode="int8").payload
    with pytest.raises(MalformedUpdateError):
        decode_update(mutate(payload))


def test_limits_are_enforced_before_allocation() -> None:
    payload = encode_update(_delta(), mode="int8").payload
    with pytest.raises(MalformedUpdateError, match="tensors"):
        decode_update(payload, max_tensors=2)
    with pytest.raises(MalformedUpdateError, match="values"):
        decode_update(payload, max_elements=100)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_malformed(data: bytes) -> None:
    try:
        out = decode_update(b"FUP1" + data, max_elements=10_000)
    except MalformedUpdateError:
        return
    assert all(v.dtype == np.float32 for v in out.values())


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=64),
    st.sampled_from(["fp32", "int8", "topk"]),
)
def test_round_trip_property(values: list[float], mode: str) -> None:
    arr = np.asarray(values, np.float32)
    enc = encode_update({"t": arr}, mode=mode, topk_fraction=0.5)  # type: ignore[arg-type]
    dec = decode_update(enc.payload)["t"]
    # What was sent plus what was kept back is always the input.
    np.testing.assert_allclose(dec + enc.residual["t"], arr, rtol=1e-5, atol=1e-3)
