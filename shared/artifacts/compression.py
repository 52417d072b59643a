"""zstd compression, deltas and bounded decompression.

A delta is an ordinary zstd frame compressed with the base artifact as a *raw content*
dictionary: the new model's unchanged regions become back-references into the old one.
Decompression is always bounded by the signed length (rule Z1), so a hostile frame can
never expand past what the manifest promised (endless-data / zip-bomb attack).
"""

from __future__ import annotations

import io

import zstandard

from shared.errors import LengthMismatchError, MalformedArtifactError

__all__ = ["compress", "decompress_bounded", "delta_compress"]

DEFAULT_LEVEL = 10


def _dict(base: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _window_log(size: int) -> int:
    # The window must span the whole base so late regions can reference it.
    return max(17, min(31, (size + size // 4).bit_length()))


def compress(data: bytes, *, level: int = DEFAULT_LEVEL) -> bytes:
    """zstd-compress ``data`` (content size written into the frame)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def delta_compress(data: bytes, base: bytes, *, level: int = DEFAULT_LEVEL) -> bytes:
    """Compress ``data`` using ``base`` as a raw-content dictionary."""
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=_window_log(max(len(base), len(data))),
        enable_ldm=True,
        write_content_size=True,
    )
    cctx = zstandard.ZstdCompressor(dict_data=_dict(base), compression_params=params)
    return cctx.compress(data)


def decompress_bounded(data: bytes, length: int, *, base: bytes | None = None) -> bytes:
    """Decompress exactly ``length`` bytes (with ``base`` as dictionary for a delta).

    Raises:
        LengthMismatchError: the frame yields fewer or more than ``length`` bytes (Z1).
        MalformedArtifactError: not a valid zstd frame (or wrong dictionary).
    """
    dctx = zstandard.ZstdDecompressor(
        dict_data=_dict(base) if base is not None else None,
        max_window_size=1 << _window_log(max(length, len(base or b""))),
    )
    try:
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
            out = reader.read(length + 1)  # one extra byte detects an oversized artifact
            if len(out) == length and reader.read(1):
                out += b"?"
    except zstandard.ZstdError as exc:
        raise MalformedArtifactError("artifact does not decompress") from exc
    if len(out) != length:
        raise LengthMismatchError(
            "artifact truncated" if len(out) < length else "artifact longer than signed"
        )
    return out
