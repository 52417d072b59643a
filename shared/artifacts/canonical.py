"""Canonical JSON and the DSSE pre-authentication encoding (PAE).

Canonical JSON here is the subset firmware can reproduce byte for byte: UTF-8, object keys
sorted, no insignificant whitespace, ASCII-only escapes, integers only (no floats, so no
float formatting ambiguity). Signatures are computed over ``PAE(payload_type, payload)``
(DSSE v1), never over a re-serialization of parsed JSON, so a verifier checks the exact
bytes it will parse and a payload of one type can never be replayed as another.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical_json", "pae"]


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError("floats are not allowed in canonical JSON")
    if isinstance(value, dict):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` (JSON-compatible, no floats) to canonical bytes."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed.

    ``"DSSEv1" SP len(type) SP type SP len(body) SP body`` with ASCII decimal lengths.
    """
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)
