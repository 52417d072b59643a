"""shared.identifiers: one strict grammar for every id; reserved system names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ConfigError, InvalidIdentifierError, ReservedNameError
from shared.identifiers import (
    COORDINATOR_ACCOUNT,
    IDENTIFIER_PATTERN,
    IDENTIFIER_RE,
    MAX_IDENTIFIER_LENGTH,
    MONITOR_ACCOUNT,
    DeviceIdField,
    IdentifierKind,
    check_identifier,
    check_new_name,
    is_reserved,
)

VALID = ["dev-a", "A", "0", "sensor_01.v2", "a" * MAX_IDENTIFIER_LENGTH, "hw-esp32-s3"]
INVALID = [
    "dev-a\n",  # re.match(r"...$") accepts this one
    "dev-a\r\n",
    "\ndev-a",
    "dev a",
    "dev-a ",
    "dev\tb",
    "dev/b",
    "+",
    "dev+",
    "#",
    "dev#",
    "$SYS",
    "dev\x00",
    "",
    "a" * (MAX_IDENTIFIER_LENGTH + 1),
    "-dev",
    ".hidden",
    "_x",
    "..",
    "dev-\u212a",  # KELVIN SIGN, looks like K
    "dev-\u0430",  # Cyrillic a
    "d\u0435v",  # Cyrillic e
    "dev\uff0da",  # FULLWIDTH HYPHEN-MINUS
    "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() is True for them
    "dev\u200b",  # zero-width space
    "dev%2Fb",
    "dev:b",
    "dev\\b",
]


@pytest.mark.parametrize("value", VALID)
def test_valid_identifiers_come_back_unchanged(value: str) -> None:
    for kind in IdentifierKind:
        assert check_identifier(value, kind) is value


@pytest.mark.parametrize("value", INVALID)
def test_invalid_identifiers_are_refused_with_a_code(value: str) -> None:
    with pytest.raises(InvalidIdentifierError) as info:
        check_identifier(value, IdentifierKind.DEVICE)
    assert info.value.code == "invalid_identifier"
    assert isinstance(info.value, ConfigError)
    assert "device id" in info.value.message


@pytest.mark.parametrize("value", [None, 7, b"dev-a", ["dev-a"], 1.5])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidIdentifierError):
        check_identifier(value, IdentifierKind.GROUP)


def test_the_dollar_anchor_trap_is_closed() -> None:
    """Why the grammar is fullmatch-only: ``$`` matches before a trailing newline."""
    assert re.match(f"^{IDENTIFIER_PATTERN}$", "dev-a\n")  # the bug the review found
    assert IDENTIFIER_RE.fullmatch("dev-a\n") is None
    assert IDENTIFIER_RE.flags & re.ASCII
    # With IGNORECASE and without ASCII, [a-z] would match KELVIN SIGN; with ASCII it cannot.
    assert re.fullmatch("[a-z]", "\u212a", re.IGNORECASE)
    assert not re.fullmatch("[a-z]", "\u212a", re.IGNORECASE | re.ASCII)


@pytest.mark.parametrize(
    "name",
    [COORDINATOR_ACCOUNT, MONITOR_ACCOUNT, "FEDGE-COORDINATOR", "fedge-anything", "all", "ALL"],
)
def test_reserved_names_are_refused_for_new_names(name: str) -> None:
    assert check_identifier(name, IdentifierKind.DEVICE) == name  # valid syntax...
    assert is_reserved(name)
    with pytest.raises(ReservedNameError) as info:  # ...but never a new device or group
        check_new_name(name, IdentifierKind.DEVICE)
    assert info.value.code == "reserved_name"
    assert isinstance(info.value, InvalidIdentifierError)


def test_ordinary_names_are_not_reserved() -> None:
    for name in ("dev-a", "fedge", "fedgex-1", "kitchen", "alle", "monitoring-1"):
        assert check_new_name(name, IdentifierKind.GROUP) == name


@given(st.text())
def test_any_text_is_returned_unchanged_or_refused(value: str) -> None:
    try:
        out = check_identifier(value, IdentifierKind.MODEL)
    except InvalidIdentifierError:
        assert IDENTIFIER_RE.fullmatch(value) is None
    else:
        assert out == value
        assert value.isascii() and value.isprintable()
        assert 1 <= len(value) <= MAX_IDENTIFIER_LENGTH
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value, re.ASCII)
        assert not set(value) & set("/+#$ \n\r\t\x00")


@given(st.from_regex(IDENTIFIER_RE, fullmatch=True))
def test_every_string_of_the_grammar_is_accepted(value: str) -> None:
    assert check_identifier(value, IdentifierKind.ARTIFACT) == value


class _Msg(BaseModel):
    device_id: DeviceIdField


class _PythonRegexMsg(BaseModel):
    model_config = ConfigDict(regex_engine="python-re")
    device_id: DeviceIdField


@pytest.mark.parametrize("model", [_Msg, _PythonRegexMsg])
def test_pydantic_field_uses_the_same_grammar(model: type[BaseModel]) -> None:
    assert model.model_validate({"device_id": "dev-a"}).device_id == "dev-a"  # type: ignore[attr-defined]
    for bad in ["dev-a\n", "dev/\u212a", "", "a" * 65, 5]:
        with pytest.raises(ValidationError):
            model.model_validate({"device_id": bad})
    schema = model.model_json_schema()["properties"]["device_id"]
    assert schema["pattern"] == f"^{IDENTIFIER_PATTERN}$"
