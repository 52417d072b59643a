"""The one grammar for unsigned decimal numbers read from topics, payloads and file names.

Python's own number parsing is wider than any wire format: ``"²".isdigit()`` is true but
``int("²")`` raises, ``int("١٢") == 12`` (Arabic-Indic digits), ``int(" 1_2 ")`` is 12 and
``re`` patterns with ``\\d`` match every Unicode digit unless compiled with ``re.ASCII``.
A number taken from untrusted text therefore goes through :func:`parse_ascii_uint` only
(rule N1): ASCII ``0``-``9``, no sign, no whitespace, no separators, no leading zeros
(except ``"0"`` itself, or zero padding to a fixed width when the format says so), and a
bound checked before :func:`int` runs. Every refusal is a
:class:`~shared.errors.ProtocolError`, so a network callback that catches it keeps running.
"""

from __future__ import annotations

import re

from shared.errors import ProtocolError

__all__ = ["parse_ascii_uint"]

_CANONICAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)  # N1: canonical ASCII decimal
_PADDED = re.compile(r"[0-9]+", re.ASCII)  # N1: fixed-width, zero-padded ASCII decimal
_REPR_CHARS = 16


def _short(text: object) -> str:
    """A repr of at most ~20 characters: error messages never echo more of the input."""
    if not isinstance(text, str):
        return type(text).__name__
    return repr(text[:_REPR_CHARS]) + ("..." if len(text) > _REPR_CHARS else "")


def parse_ascii_uint(text: str, *, what: str, max_value: int, width: int | None = None) -> int:
    """Parse an unsigned ASCII decimal integer from untrusted text (rule N1).

    Args:
        text: The digits, nothing else (no sign, spaces, ``_`` or non-ASCII digits).
        what: What the number is, for the error message (e.g. ``"chunk index"``).
        max_value: Largest accepted value (inclusive, ``>= 0``).
        width: If given, the text must be exactly this many digits, zero-padded (file
            names such as ``chunk-0007.bin``); otherwise leading zeros are refused.

    Returns:
        The value, ``0 <= value <= max_value``.

    Raises:
        ProtocolError: ``text`` is not a ``str``, not in the grammar, or over
            ``max_value``. The message shows at most a short repr of ``text``.
    """
    if not isinstance(text, str):
        raise ProtocolError(f"invalid {what}: expected text, got {_short(text)}")
    # N1: bound the length before matching or converting, so huge inputs cost nothing.
    limit = len(str(max_value)) if width is None else width
    if not 0 < len(text) <= limit:
        raise ProtocolError(f"invalid {what} {_short(text)}: 1 to {limit} ASCII digits")
    if width is None:
        if _CANONICAL.fullmatch(text) is None:
            raise ProtocolError(f"invalid {what} {_short(text)}: not an ASCII decimal number")
    elif len(text) != width or _PADDED.fullmatch(text) is None:
        raise ProtocolError(f"invalid {what} {_short(text)}: not {width} ASCII digits")
    value = int(text)  # safe: text is [0-9]+ and short
    if value > max_value:
        raise ProtocolError(f"invalid {what} {_short(text)}: above {max_value}")
    return value
