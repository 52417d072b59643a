"""Request bodies of the loopback HTTP API: JSON and ``.npy`` to a checked numpy array.

Split from :mod:`edge.inference.server` (which routes and bounds requests); every failure
is an :class:`HttpError` with a status, a stable code and a fixed message that never
quotes the body back.
"""

from __future__ import annotations

import io
import itertools
import json
from http import HTTPStatus
from typing import Any

import numpy as np

__all__ = ["HttpError", "array_from_json", "array_from_npy"]

_JSON_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class HttpError(Exception):
    """A request the API refuses: HTTP ``status``, wire ``code`` and a fixed ``message``."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid input value")


def _leaf_types(inputs: Any, ndim: int) -> set[type]:
    """The Python types of the leaves of a nested list that numpy found to be ``ndim``-deep.

    ``chain.from_iterable`` flattens one level at C speed, so a 1 MiB body costs
    milliseconds. Needed because ``np.asarray([True, 1.5])`` silently gives floats.
    """
    level: Any = [inputs]
    for _ in range(ndim):
        level = itertools.chain.from_iterable(level)
    return set(map(type, level))


def array_from_json(body: bytes) -> np.ndarray:
    """``{"inputs": [...], "dtype"?: ...}`` to an array of that dtype (float32 default)."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            "bad_json",
            f"body is not valid JSON (line {exc.lineno}, column {exc.colno})",
        ) from exc
    except (ValueError, RecursionError) as exc:  # encoding, NaN/Infinity, nesting, huge ints
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            "bad_json",
            "body is not valid JSON (UTF-8, no NaN/Infinity, bounded nesting and integers)",
        ) from exc
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise HttpError(HTTPStatus.BAD_REQUEST, "bad_json", 'expected an object {"inputs": [...]}')
    dtype_name = doc.get("dtype", "float32")
    # isinstance first: a list or object is unhashable and would make `in` raise.
    if not isinstance(dtype_name, str) or dtype_name not in _JSON_DTYPES:
        raise HttpError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "wrong_dtype",
            f"dtype must be one of {', '.join(_JSON_DTYPES)}",
        )
    inputs = doc["inputs"]
    not_numbers = HttpError(
        HTTPStatus.BAD_REQUEST,
        "bad_inputs",
        "inputs must be a non-empty, rectangular (nested) list of numbers",
    )
    try:
        raw = np.asarray(inputs)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise not_numbers from exc  # ragged, too many dimensions, or absurdly nested
    # JSON numbers only: strings, booleans, nulls and objects are not silently converted.
    if raw.dtype.kind not in "iuf" or raw.size == 0:
        raise not_numbers
    try:
        leaves = _leaf_types(inputs, raw.ndim)
    except TypeError as exc:  # pragma: no cover - numpy already proved it rectangular
        raise not_numbers from exc
    if not leaves <= {int, float}:
        raise not_numbers
    target: np.dtype[Any] = np.dtype(_JSON_DTYPES[dtype_name])
    if target.kind in "iu":
        info = np.iinfo(target)
        if raw.dtype.kind == "f" or raw.min() < info.min or raw.max() > info.max:
            raise HttpError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "wrong_dtype",
                f"inputs are not all {dtype_name} integers",
            )
    elif raw.dtype.kind == "f" and not (
        np.isfinite(raw).all() and float(np.abs(raw).max()) <= _FLOAT32_MAX
    ):
        # 1e400 parses as inf and 1e39 overflows float32 to inf: say so, do not compute.
        raise HttpError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "not_finite",
            "inputs contain values outside the float32 range",
        )
    return raw.astype(target)


def array_from_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` body (never pickled objects) to a native-order, C-contiguous array."""
    try:
        # allow_pickle=False: a .npy body must never be able to run code.
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError/... on garbage
        # A fixed message: numpy's own quotes the (attacker's) header back.
        raise HttpError(
            HTTPStatus.BAD_REQUEST, "bad_npy", "body is not a .npy array (numpy format 1-3)"
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise HttpError(HTTPStatus.BAD_REQUEST, "bad_npy", "body is not a single .npy array")
    # Valid .npy variants the interpreter does not take as is: big-endian data would be
    # refused as a "wrong" float32/int8, and a Fortran-order array must be C-contiguous.
    if arr.dtype.kind in "iuf" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)
