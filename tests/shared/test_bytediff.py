"""The ``zstd_bytediff`` delta: wire format, bounds, and when the builder picks it."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.artifacts import ArtifactBuilder, BaseArtifact, Encoding
from shared.artifacts.compression import (
    bytediff,
    bytediff_compress,
    bytediff_decompress_bounded,
    compress,
    delta_compress,
)
from shared.errors import LengthMismatchError, MalformedArtifactError
from tests.helpers.deltas import fine_tuned, int8_weights, shifted
from tests.helpers.release import artifact


def _reference_diff(new: bytes, base: bytes) -> bytes:
    """docs/protocol.md §4 "Encodings", literally."""
    n = min(len(new), len(base))
    return bytes((new[i] - base[i]) % 256 for i in range(n)) + new[n:]


@pytest.mark.parametrize(
    ("new_len", "base_len"),
    [(5000, 5000), (7000, 5000), (3000, 5000), (1, 5000), (5000, 1)],
    ids=["equal", "new-longer", "new-shorter", "new-one-byte", "base-one-byte"],
)
def test_roundtrip_and_wire_format(new_len: int, base_len: int) -> None:
    base = int8_weights(6000, seed=3)[:base_len]
    new = (fine_tuned(base) + artifact(new_len, seed=4))[:new_len]
    frame = bytediff_compress(new, base)
    # The frame is a plain zstd frame (no dictionary) of exactly the documented stream.
    assert zstandard.ZstdDecompressor().decompress(frame) == _reference_diff(new, base)
    assert bytediff(new, base) == _reference_diff(new, base)
    assert bytediff_decompress_bounded(frame, new_len, base=base) == new


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.binary(max_size=3000))
def test_roundtrip_any_bytes_any_base(new: bytes, base: bytes) -> None:
    frame = bytediff_compress(new, base)
    assert zstandard.ZstdDecompressor().decompress(frame) == _reference_diff(new, base)
    assert bytediff_decompress_bounded(frame, len(new), base=base) == new


def test_small_signed_changes_become_a_small_frame() -> None:
    old = int8_weights(200_000)
    new = fine_tuned(old)
    diff = bytediff(new, old)
    assert set(diff[64:]) == {0x00, 0x01, 0x02, 0xFE, 0xFF}
    assert len(bytediff_compress(new, old)) < 0.5 * len(compress(new))


@pytest.mark.parametrize("extra", [1, -1, 1000, -1000])
def test_frame_of_the_wrong_length_is_refused(extra: int) -> None:
    base = int8_weights(5000)
    new = fine_tuned(base)
    signed = len(new) - extra  # the frame yields `extra` bytes more (or fewer) than signed
    with pytest.raises(LengthMismatchError):
        bytediff_decompress_bounded(bytediff_compress(new, base), signed, base=base)


def test_bomb_and_garbage_frames_are_refused() -> None:
    base = int8_weights(5000)
    with pytest.raises((LengthMismatchError, MalformedArtifactError)):
        bytediff_decompress_bounded(compress(bytes(10_000_000)), 1000, base=base)
    with pytest.raises(MalformedArtifactError):
        bytediff_decompress_bounded(b"not a zstd frame at all", 1000, base=base)
    # A dictionary delta is not a bytediff frame: it does not decode without the dictionary.
    with pytest.raises(MalformedArtifactError):
        bytediff_decompress_bounded(delta_compress(fine_tuned(base), base), 5000, base=base)


# --- the builder's choice ----------------------------------------------------------------


def _sizes(new: bytes, old: bytes) -> dict[Encoding, int]:
    return {
        Encoding.ZSTD: len(compress(new)),
        Encoding.ZSTD_DELTA: len(delta_compress(new, old)),
        Encoding.ZSTD_BYTEDIFF: len(bytediff_compress(new, old)),
    }


def _fine_tuned() -> tuple[bytes, bytes]:  # int8 weights moved by ±1..2 in place
    old = int8_weights(100_000)
    return old, fine_tuned(old)


def _shifted() -> tuple[bytes, bytes]:  # bytes inserted: everything after moves
    old = int8_weights(100_000)
    return old, shifted(old)


def _unrelated() -> tuple[bytes, bytes]:  # another, compressible artifact: nothing to reuse
    return b"unrelated" * 10, artifact(20_000, seed=5)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (_fine_tuned, Encoding.ZSTD_BYTEDIFF),
        (_shifted, Encoding.ZSTD_DELTA),
        (_unrelated, Encoding.ZSTD),
    ],
    ids=["fine-tuned", "shifted", "unrelated"],
)
def test_builder_picks_the_smallest_encoding(
    case: Callable[[], tuple[bytes, bytes]], expected: Encoding
) -> None:
    old, new = case()
    encoding, encoded = ArtifactBuilder().encode(new, BaseArtifact(1, old))
    sizes = _sizes(new, old)
    assert encoding is expected
    assert len(encoded) == sizes[expected] < min(s for e, s in sizes.items() if e != expected)


def test_builder_prefers_the_full_artifact_on_a_tie() -> None:
    """Equal sizes: the full artifact, which does not depend on what the device holds."""
    old, new = os.urandom(50_000), os.urandom(50_000)  # incompressible: raw blocks each
    sizes = _sizes(new, old)
    assert len(set(sizes.values())) == 1
    assert ArtifactBuilder().encode(new, BaseArtifact(1, old))[0] is Encoding.ZSTD
