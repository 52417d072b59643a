"""New versions of an artifact that make one delta encoding clearly the smallest.

``fine_tuned`` mimics fine-tuning + int8 requantization: the layout is unchanged and most
bytes move by a small signed amount at the same offset (→ ``zstd_bytediff``). ``shifted``
inserts a few bytes near the start, so every later byte sits at another offset but is
otherwise unchanged (→ ``zstd_delta``: back-references into the old artifact).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.artifacts import Encoding


def int8_weights(size: int, seed: int = 0) -> bytes:
    """A fake int8 model: a small fixed header, then Gaussian int8 "weights"."""
    rng = np.random.default_rng(seed)
    header = b"TFL3" + bytes(range(256)) * 2
    weights = np.clip(np.rint(rng.normal(0, 40, size - len(header))), -127, 127)
    return header + weights.astype(np.int8).tobytes()


def fine_tuned(base: bytes, seed: int = 1, fraction: float = 0.65) -> bytes:
    """``base`` with ±1..2 added (mod 256) at ``fraction`` of the positions after 64."""
    rng = np.random.default_rng(seed)
    data = np.frombuffer(base, dtype=np.uint8).copy()
    moved = rng.random(len(data)) < fraction
    moved[:64] = False  # the "header" stays put
    steps = rng.choice(np.array([-2, -1, 1, 2], dtype=np.int16), len(data), p=[0.1, 0.4, 0.4, 0.1])
    data[moved] = (data[moved].astype(np.int16) + steps[moved]).astype(np.uint8)
    return data.tobytes()


def shifted(base: bytes, at: int = 100) -> bytes:
    """``base`` with 7 bytes inserted at offset ``at`` (everything after moves)."""
    return base[:at] + b"\x00insert" + base[at:]


#: The delta encoding each construction should make the builder pick.
NEW_VERSION: dict[Encoding, Callable[[bytes], bytes]] = {
    Encoding.ZSTD_DELTA: shifted,
    Encoding.ZSTD_BYTEDIFF: fine_tuned,
}
