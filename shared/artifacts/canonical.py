"""Canonical JSON, its one strict parser, and the DSSE pre-authentication encoding (PAE).

Canonical JSON here is the subset firmware can reproduce byte for byte: UTF-8, object keys
sorted, no insignificant whitespace, ASCII-only escapes, integers only (no floats, so no
float formatting ambiguity). Signatures are computed over ``PAE(payload_type, payload)``
(DSSE v1), never over a re-serialization of parsed JSON, so a verifier checks the exact
bytes it will parse and a payload of one type can never be replayed as another.

Every signed payload (manifest, command, key certificate, revocation list) is read back
through :func:`parse_signed_model`, i.e. two rules, in this order, after the signature
has been verified over the exact bytes:

- **J1** (:func:`parse_canonical`): the bytes are exactly ``canonical_json`` of the value
  they parse to, with no duplicate keys, floats, NaN/Infinity, integers outside
  ``|n| < 2**63``, non-ASCII bytes, lone surrogates or nesting deeper than
  :data:`MAX_DEPTH`. A parser written in C that accepts only this form reads the same
  bytes as the same value: no signature confusion between implementations.
  Refusal: :class:`~shared.errors.NonCanonicalPayloadError` (``non_canonical_payload``).
- **J2**: the parsed value validates against the payload's model in pydantic **strict**
  mode: no coercion, so ``"1"`` (a string) or ``true`` is never an integer. Refusal:
  :class:`~shared.errors.ProtocolError` (``bad_message``), as for any malformed payload.

Strict mode fed from Python values (what J1 yields) wants Python types JSON does not have:
an enum member and a tuple. The payload models therefore mark those fields with
:func:`json_enum` and :data:`JSON_ARRAY`, which turn exactly a JSON string into the enum
(unknown values refused) and exactly a JSON array into a tuple; every other input still
meets the strict validator. ``Literal[1]`` accepts ``True`` even in strict mode, so spec
versions use :data:`SpecVersion`, which refuses booleans.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

from shared.errors import NonCanonicalPayloadError, ProtocolError

__all__ = [
    "JSON_ARRAY",
    "MAX_CANONICAL_INT",
    "MAX_DEPTH",
    "SpecVersion",
    "canonical_json",
    "json_enum",
    "pae",
    "parse_canonical",
    "parse_signed_model",
]

#: J1: integers must satisfy ``|n| <= MAX_CANONICAL_INT`` (fits a signed 64-bit integer).
MAX_CANONICAL_INT = 2**63 - 1
#: J1: most arrays/objects nested in one another (payloads use at most 2 levels).
MAX_DEPTH = 16
_MAX_INT_DIGITS = len(str(MAX_CANONICAL_INT))


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


# --- J1: the one strict canonical parser -------------------------------------------------


def _refuse_float(_text: str) -> Any:
    raise NonCanonicalPayloadError("floats are not allowed in a signed payload")  # J1


def _refuse_constant(_text: str) -> Any:
    raise NonCanonicalPayloadError("NaN/Infinity are not allowed in a signed payload")  # J1


def _bounded_int(text: str) -> int:
    # J1: bounded integers; the length check comes first so int() never sees a huge literal.
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise NonCanonicalPayloadError("integer out of range in a signed payload")
    number = int(text)  # the JSON scanner only hands over ASCII -?(0|[1-9][0-9]*)
    if abs(number) > MAX_CANONICAL_INT:
        raise NonCanonicalPayloadError("integer out of range in a signed payload")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # J1: a duplicate key is read as the first value by some parsers, the last by others.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise NonCanonicalPayloadError("duplicate key in a signed payload")
    return obj


def _is_unicode_scalar_text(text: str) -> bool:
    try:
        text.encode("utf-8")  # fails exactly on lone surrogates (e.g. an escaped "\ud800")
    except UnicodeEncodeError:
        return False
    return True


def _check_value(value: Any, depth: int) -> None:
    """J1 checks the JSON scanner does not make; ``depth`` counts the enclosing containers."""
    if isinstance(value, str):
        if not _is_unicode_scalar_text(value):
            raise NonCanonicalPayloadError("lone surrogate in a signed payload")
    elif isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            raise NonCanonicalPayloadError("signed payload nested too deeply")
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for item in items:
            _check_value(item, depth + 1)


def parse_canonical(data: bytes) -> Any:
    """Parse signed payload bytes that must be exactly canonical JSON (rule J1).

    Args:
        data: The exact payload bytes (after the signature over them was verified).

    Returns:
        The JSON value: ``dict``/``list``/``str``/``int``/``bool``/``None`` only, such that
        ``canonical_json(value) == data``.

    Raises:
        NonCanonicalPayloadError: invalid UTF-8, a non-ASCII byte, not JSON, a duplicate
            key, a float or exponent, NaN/Infinity, an integer with ``|n| >= 2**63``, a lone
            surrogate, nesting deeper than :data:`MAX_DEPTH`, or any difference from the
            canonical re-serialization (unsorted keys, whitespace, non-minimal escapes such
            as ``"\\u0041"``, ``-0``). The message never quotes the payload.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise NonCanonicalPayloadError("signed payload must be bytes")
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NonCanonicalPayloadError("signed payload is not valid UTF-8") from exc
    if not text.isascii():  # canonical JSON escapes every non-ASCII character
        raise NonCanonicalPayloadError("non-ASCII character in a signed payload")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=_refuse_float,
            parse_int=_bounded_int,
            parse_constant=_refuse_constant,
        )
    except RecursionError as exc:
        raise NonCanonicalPayloadError("signed payload nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError
        raise NonCanonicalPayloadError("signed payload is not JSON") from exc
    _check_value(value, 0)
    if canonical_json(value) != raw:
        raise NonCanonicalPayloadError("signed payload is not in canonical form")
    return value


# --- J2: strict schema validation of the parsed value ------------------------------------


def _array_to_tuple(value: Any) -> Any:
    # J2: a JSON array is the wire form of a tuple field (strict mode alone wants a tuple).
    return tuple(value) if type(value) is list else value


#: Marks a tuple field of a payload model: a JSON array (exactly a ``list``) becomes a tuple.
JSON_ARRAY = BeforeValidator(_array_to_tuple)

_E = TypeVar("_E", bound=StrEnum)


def json_enum(enum: type[_E]) -> BeforeValidator:
    """Mark an enum field of a payload model: a JSON string becomes the member (rule J2).

    Only an exact ``str`` is converted (an unknown value raises, refused by pydantic);
    anything else reaches the strict enum validator unchanged and is refused.
    """

    def convert(value: Any) -> Any:
        return enum(value) if type(value) is str else value

    return BeforeValidator(convert)


def _not_bool(value: Any) -> Any:
    # J2: Literal[1] matches True (True == 1) even in strict mode; a boolean is no integer.
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    return value


#: The ``spec_version`` of a version-1 payload: exactly the JSON integer ``1``.
SpecVersion = Annotated[Literal[1], BeforeValidator(_not_bool)]

_M = TypeVar("_M", bound=BaseModel)


def parse_signed_model(model: type[_M], data: bytes, *, what: str) -> _M:
    """Parse verified payload bytes as ``model``: rule J1, then J2 (strict, no coercion).

    Args:
        model: The payload model (e.g. ``Manifest``, ``Command``).
        data: The exact payload bytes whose signature was verified.
        what: Name of the document for the error message (e.g. ``"manifest"``).

    Raises:
        NonCanonicalPayloadError: J1, the bytes are not canonical JSON.
        ProtocolError: J2, the value does not validate strictly (names no payload data).
    """
    value = parse_canonical(data)
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        raise ProtocolError(f"malformed {what} ({exc.error_count()} errors)") from exc
