"""ArtifactBuilder → ArtifactAssembler: order, duplicates, resume, deltas, bounds."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.artifacts import (
    ArtifactAssembler,
    ArtifactBuilder,
    AssemblyState,
    BaseArtifact,
    ChunkOutcome,
    DeltaBase,
    Encoding,
    Precision,
    sealed_chunk_from_bytes,
    sealed_chunk_to_bytes,
    unwrap_content_key,
)
from shared.artifacts.compression import (
    bytediff_compress,
    compress,
    decompress_bounded,
    delta_compress,
)
from shared.errors import DeltaBaseError, LengthMismatchError, MalformedArtifactError
from tests.helpers.deltas import NEW_VERSION, fine_tuned, int8_weights
from tests.helpers.release import HW, NOW, Fleet, artifact


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


def _assemble(fleet: Fleet, release, chunks, device: str = "dev-a", base: bytes | None = None):
    asm = ArtifactAssembler(release.manifest)
    state = asm.start()
    for c in chunks:
        state, _ = asm.add(state, c)
    key = unwrap_content_key(release.manifest, device, fleet.devices[device])
    return asm.assemble(state, key, base=base)


def test_chunks_in_any_order_with_duplicates(fleet: Fleet) -> None:
    data = artifact(50_000)
    release = fleet.build(data, 2, chunk_size=1024)
    assert release.manifest.chunk_count > 5
    chunks = list(release.chunks) * 2
    random.Random(1).shuffle(chunks)
    asm = ArtifactAssembler(release.manifest)
    state = asm.start()
    outcomes = []
    for c in chunks:
        state, outcome = asm.add(state, sealed_chunk_from_bytes(sealed_chunk_to_bytes(c)))
        outcomes.append(outcome)
    assert outcomes.count(ChunkOutcome.DUPLICATE) == len(release.chunks)
    key = unwrap_content_key(release.manifest, "dev-b", fleet.devices["dev-b"])
    assert asm.assemble(state, key) == data


def test_resume_from_persisted_state(fleet: Fleet) -> None:
    """The updater persists accepted chunks and rebuilds the state after a restart."""
    data = artifact(30_000)
    release = fleet.build(data, 2, chunk_size=2048)
    asm = ArtifactAssembler(release.manifest)
    state = asm.start()
    for c in release.chunks[::2]:
        state, _ = asm.add(state, c)
    on_disk = dict(state.chunks)  # what the updater would have written
    restored = AssemblyState(release.manifest.artifact_id, on_disk)
    missing = asm.missing(restored)
    assert missing == tuple(range(1, release.manifest.chunk_count, 2))
    assert not asm.is_complete(restored)
    for i in missing:
        restored, _ = asm.add(restored, release.chunks[i])
    key = unwrap_content_key(release.manifest, "dev-a", fleet.devices["dev-a"])
    assert asm.assemble(restored, key) == data


def test_sparse_change_of_random_bytes_is_a_small_delta(fleet: Fleet) -> None:
    old = os.urandom(200_000)  # int8 weights are high-entropy: the realistic worst case
    new = bytearray(old)
    for i in range(0, len(new), 4001):
        new[i] ^= 0xFF
    new = bytes(new)
    release = fleet.build(new, 3, base=BaseArtifact(2, old), chunk_size=8192)
    m = release.manifest
    assert m.encoding.is_delta and m.delta_base is not None
    assert m.encoded_length < len(compress(new)) / 10
    assert _assemble(fleet, release, release.chunks, base=old) == new


@pytest.mark.parametrize("encoding", list(NEW_VERSION), ids=str)
def test_delta_is_used_when_smaller_and_verified(fleet: Fleet, encoding: Encoding) -> None:
    old = int8_weights(200_000)
    new = NEW_VERSION[encoding](old)
    release = fleet.build(new, 3, base=BaseArtifact(2, old), chunk_size=8192)
    m = release.manifest
    assert m.encoding is encoding
    assert m.delta_base == DeltaBase(
        version=2, sha256=hashlib.sha256(old).hexdigest(), length=len(old)
    )
    assert m.encoded_length < len(compress(new)) / 2
    assert _assemble(fleet, release, release.chunks, base=old) == new
    for wrong in (old[:-1] + b"?", old[:-1], fine_tuned(old, seed=7), None):
        with pytest.raises(DeltaBaseError):
            _assemble(fleet, release, release.chunks, base=wrong)


class _HostileBuilder(ArtifactBuilder):
    """A (compromised) builder whose signed bytediff frame yields ``extra`` more bytes."""

    def __init__(self, extra: int) -> None:
        super().__init__(chunk_size=4096)
        self.extra = extra

    def encode(self, artifact: bytes, base: BaseArtifact | None) -> tuple[Encoding, bytes]:
        assert base is not None
        lying = artifact + b"\x01" * self.extra if self.extra > 0 else artifact[: self.extra]
        return Encoding.ZSTD_BYTEDIFF, bytediff_compress(lying, base.data)


@pytest.mark.parametrize("extra", [1, -1, 5000])
def test_bytediff_frame_longer_or_shorter_than_signed_is_refused(fleet: Fleet, extra: int) -> None:
    old = int8_weights(20_000)
    new = fine_tuned(old)
    release = _HostileBuilder(extra).build(
        new,
        model_id="kws",
        version=3,
        precision=Precision.INT8,
        hardware_ids=[HW],
        recipients={"dev-a": fleet.devices["dev-a"].public_key},
        rollout_id="r1",
        now=NOW,
        base=BaseArtifact(2, old),
    )
    assert release.manifest.encoding is Encoding.ZSTD_BYTEDIFF
    assert release.manifest.length == len(new)
    with pytest.raises(LengthMismatchError):
        _assemble(fleet, release, release.chunks, base=old)


def test_full_artifact_when_delta_is_not_smaller(fleet: Fleet) -> None:
    release = fleet.build(artifact(20_000, seed=5), 3, base=BaseArtifact(2, b"unrelated" * 10))
    assert release.manifest.encoding is Encoding.ZSTD and release.manifest.delta_base is None


def test_incomplete_state_cannot_assemble(fleet: Fleet) -> None:
    release = fleet.build(artifact(), 2, chunk_size=1024)
    with pytest.raises(LengthMismatchError):
        _assemble(fleet, release, release.chunks[:-1])


def test_chunk_of_another_artifact_is_refused(fleet: Fleet) -> None:
    a, b = fleet.build(artifact(), 2), fleet.build(artifact(), 2)
    asm = ArtifactAssembler(a.manifest)
    state = asm.start()
    with pytest.raises(MalformedArtifactError):
        asm.add(state, b.chunks[0])


def test_decompression_is_bounded() -> None:
    with pytest.raises(LengthMismatchError):
        decompress_bounded(compress(bytes(100_000)), 50_000)
    # A frame needing a bigger window than the signed length allows is refused outright.
    with pytest.raises((LengthMismatchError, MalformedArtifactError)):
        decompress_bounded(compress(bytes(10_000_000)), 1000)
    assert (
        decompress_bounded(delta_compress(b"abc" * 100, b"abc" * 90), 300, base=b"abc" * 90)
        == b"abc" * 100
    )


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=1, max_size=20_000), st.integers(1, 4096))
def test_roundtrip_any_bytes_any_chunk_size(data: bytes, chunk_size: int) -> None:
    fleet = Fleet(devices={"dev-a": Fleet().devices["dev-a"]})
    release = fleet.build(data, 2, chunk_size=chunk_size)
    chunks = list(release.chunks)
    random.Random(len(data)).shuffle(chunks)
    assert _assemble(fleet, release, chunks) == data
