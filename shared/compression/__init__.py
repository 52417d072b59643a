"""Codecs for model updates on the learning plane (numpy only, no I/O)."""

from shared.compression.updates import (
    UPDATE_MODES,
    EncodedUpdate,
    MalformedUpdateError,
    NonFiniteUpdateError,
    UpdateMode,
    decode_update,
    encode_update,
    float32_nbytes,
)

__all__ = [
    "UPDATE_MODES",
    "EncodedUpdate",
    "MalformedUpdateError",
    "NonFiniteUpdateError",
    "UpdateMode",
    "decode_update",
    "encode_update",
    "float32_nbytes",
]
