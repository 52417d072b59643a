"""Signed payloads must be exactly canonical JSON (rule J1) and strictly typed (rule J2).

Every leniency test wraps the non-canonical payload in a *validly signed* envelope (right
key, right certificate, signature over the exact bytes), so the only thing standing in
the way is the canonical/strict parse; where the old lax parser would have accepted the
bytes, the test shows that too.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shared.artifacts import (
    KeyCertificate,
    Manifest,
    RevocationList,
    Role,
    certify_key,
    manifest_to_bytes,
    sign_revocations,
    verify_manifest,
)
from shared.artifacts.canonical import (
    MAX_CANONICAL_INT,
    MAX_DEPTH,
    canonical_json,
    parse_canonical,
    parse_signed_model,
)
from shared.artifacts.manifest import Purpose, b64encode, manifest_from_bytes
from shared.artifacts.trust import (
    CERTIFICATE_TYPE,
    COMMAND_TYPE,
    MANIFEST_TYPE,
    REVOCATIONS_TYPE,
    sign_envelope,
    verify_signed,
)
from shared.errors import (
    BadSignatureError,
    FedgeError,
    MalformedArtifactError,
    NonCanonicalPayloadError,
    ProtocolError,
    SecurityError,
)
from shared.protocol.commands import Command, CommandAction, verify_command
from tests.helpers.release import HW, NOW, Fleet, artifact

NON_CANONICAL = "non_canonical_payload"
BAD_MESSAGE = "bad_message"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


# --- the four signed documents, each through its real verification path ------------------


@dataclass(frozen=True)
class Doc:
    """One kind of signed document: a valid value, its model and its verification path."""

    name: str
    model: type[BaseModel]
    int_field: str  # an integer field with no upper bound (so a huge value is schema-valid)
    value: Callable[[Fleet], dict[str, Any]]
    verify: Callable[[Fleet, bytes], object]  # signs ``payload`` validly, then verifies


def _manifest_value(fleet: Fleet) -> dict[str, Any]:
    m = fleet.build(artifact(), 2).manifest.for_devices(["dev-a"])
    return dict(json.loads(manifest_to_bytes(m)))


def _verify_manifest_payload(fleet: Fleet, payload: bytes) -> object:
    env = sign_envelope(MANIFEST_TYPE, payload, fleet.release, certificate=fleet.release_cert)
    return verify_manifest(
        env, fleet.trust(), device_id="dev-a", hardware_id=HW, floor_version=1, now=NOW
    ).manifest


def _command_value(_fleet: Fleet) -> dict[str, Any]:
    cmd = Command(
        action=CommandAction.ROLLBACK, device_id="dev-a", seq=5, issued_at=NOW, expires=NOW + 60
    )
    return cmd.model_dump(mode="json")


def _verify_command_payload(fleet: Fleet, payload: bytes) -> object:
    env = sign_envelope(
        COMMAND_TYPE, payload, fleet.coordinator, certificate=fleet.coordinator_cert
    )
    return verify_command(env, fleet.trust(), device_id="dev-a", last_seq=0, now=NOW)


def _certificate_value(fleet: Fleet) -> dict[str, Any]:
    key = fleet.release.verify_key
    cert = KeyCertificate(
        role=Role.RELEASE,
        key_id=key.key_id,
        public_key=b64encode(key.to_bytes()),
        issued_at=NOW - 60,
        expires=NOW + 86_400,
    )
    return cert.model_dump(mode="json")


def _verify_certificate_payload(fleet: Fleet, payload: bytes) -> object:
    """A manifest signed by the release key whose root-signed certificate is ``payload``."""
    cert_env = sign_envelope(CERTIFICATE_TYPE, payload, fleet.root)
    m = fleet.build(artifact(), 2).manifest.for_devices(["dev-a"])
    env = fleet.sign(m, fleet.release, cert_env)
    verify_manifest(env, fleet.trust(), device_id="dev-a", hardware_id=HW, floor_version=1, now=NOW)
    _, cert = verify_signed(
        env, fleet.trust(), payload_type=MANIFEST_TYPE, role=Role.RELEASE, now=NOW
    )
    return cert


def _revocations_value(_fleet: Fleet) -> dict[str, Any]:
    return RevocationList(version=2, issued_at=NOW, revoked_key_ids=("0" * 64,)).model_dump(
        mode="json"
    )


def _verify_revocations_payload(fleet: Fleet, payload: bytes) -> object:
    revs = fleet.trust().with_revocations(sign_envelope(REVOCATIONS_TYPE, payload, fleet.root))
    return revs.revocations


DOCS = [
    Doc("manifest", Manifest, "expires", _manifest_value, _verify_manifest_payload),
    Doc("command", Command, "expires", _command_value, _verify_command_payload),
    Doc("certificate", KeyCertificate, "expires", _certificate_value, _verify_certificate_payload),
    Doc("revocations", RevocationList, "version", _revocations_value, _verify_revocations_payload),
]
DOC_IDS = [d.name for d in DOCS]


def _replace_number(value: dict[str, Any], field: str, text: str) -> bytes:
    """Canonical bytes of ``value`` with the number of ``field`` written as ``text``."""
    data = canonical_json(value)
    old = re.compile(rb'"' + field.encode() + rb'":(-?[0-9]+)(?=[,}])')
    assert len(old.findall(data)) == 1
    return old.sub(b'"' + field.encode() + b'":' + text.encode(), data)


def _rename_key(value: dict[str, Any], key: str, raw: bytes) -> bytes:
    data = canonical_json(value)
    old = b'"' + key.encode() + b'":'
    assert data.count(old) == 1
    return data.replace(old, raw + b":")


# Each leniency: (name, payload builder, expected code, the old lax parser accepted it).
Mutation = Callable[[dict[str, Any], str], bytes]
LENIENCIES: list[tuple[str, Mutation, str, bool]] = [
    # J2: canonical JSON of a *string*: refused by the strict schema, not by J1.
    ("string_for_int", lambda v, f: canonical_json(v | {f: str(v[f])}), BAD_MESSAGE, True),
    # Literal[1] used to match true (True == 1); SpecVersion now refuses it in any mode.
    ("bool_for_int", lambda v, f: _replace_number(v, "spec_version", "true"), BAD_MESSAGE, False),
    # J1: floats in any spelling.
    ("float_for_int", lambda v, f: _replace_number(v, f, f"{v[f]}.5"), NON_CANONICAL, False),
    ("one_point_zero", lambda v, f: _replace_number(v, f, f"{v[f]}.0"), NON_CANONICAL, True),
    ("spec_1_0", lambda v, f: _replace_number(v, "spec_version", "1.0"), NON_CANONICAL, True),
    ("spec_1e0", lambda v, f: _replace_number(v, "spec_version", "1e0"), NON_CANONICAL, True),
    ("exponent", lambda v, f: _replace_number(v, f, f"{v[f]}E0"), NON_CANONICAL, True),
    # J1: duplicate keys (last one wins in pydantic, first one in other parsers).
    (
        "duplicate_key",
        lambda v, f: _replace_number(v, f, f'1,"{f}":{v[f]}'),
        NON_CANONICAL,
        True,
    ),
    (
        "duplicate_identical_key",
        lambda v, f: _replace_number(v, f, f'{v[f]},"{f}":{v[f]}'),
        NON_CANONICAL,
        True,
    ),
    # J1: byte-identical re-serialization.
    (
        "unsorted_keys",
        lambda v, f: json.dumps(dict(reversed(v.items())), separators=(",", ":")).encode(),
        NON_CANONICAL,
        True,
    ),
    ("whitespace", lambda v, f: json.dumps(v, sort_keys=True).encode(), NON_CANONICAL, True),
    ("leading_space", lambda v, f: b" " + canonical_json(v), NON_CANONICAL, True),
    ("trailing_newline", lambda v, f: canonical_json(v) + b"\n", NON_CANONICAL, True),
    (
        "escaped_ascii",
        lambda v, f: _rename_key(v, "spec_version", b'"spec_versio\\u006e"'),
        NON_CANONICAL,
        True,
    ),
    ("negative_zero", lambda v, f: _replace_number(v, "spec_version", "-0"), NON_CANONICAL, False),
    # J1: non-ASCII and invalid UTF-8 bytes, lone surrogates.
    (
        "non_ascii",
        lambda v, f: _rename_key(v, "spec_version", '"spec_versión"'.encode()),
        NON_CANONICAL,
        False,
    ),
    (
        "unicode_digits",
        lambda v, f: _replace_number(v, f, "١٢٣"),  # \d-style digits
        NON_CANONICAL,
        False,
    ),
    (
        "invalid_utf8",
        lambda v, f: _rename_key(v, "spec_version", b'"spec_version\xff"'),
        NON_CANONICAL,
        False,
    ),
    (
        "lone_surrogate",
        lambda v, f: _rename_key(v, "spec_version", b'"spec_version\\ud800"'),
        NON_CANONICAL,
        False,
    ),
    # J1: integers beyond |n| < 2**63, NaN and infinities.
    ("huge_int", lambda v, f: _replace_number(v, f, str(2**63)), NON_CANONICAL, True),
    ("huger_int", lambda v, f: _replace_number(v, f, "9" * 5000), NON_CANONICAL, False),
    ("nan", lambda v, f: _replace_number(v, f, "NaN"), NON_CANONICAL, False),
    ("infinity", lambda v, f: _replace_number(v, f, "Infinity"), NON_CANONICAL, False),
    ("minus_infinity", lambda v, f: _replace_number(v, f, "-Infinity"), NON_CANONICAL, False),
]


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_canonical_payload_verifies(fleet: Fleet, doc: Doc) -> None:
    """Control: the same signing path with canonical bytes is accepted (strict mode too)."""
    value = doc.value(fleet)
    result = doc.verify(fleet, canonical_json(value))
    assert isinstance(result, doc.model)
    assert result.model_dump(mode="json") == value


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
@pytest.mark.parametrize(
    ("name", "mutate", "code", "lax_accepted"), LENIENCIES, ids=[n for n, *_ in LENIENCIES]
)
def test_signed_non_canonical_payload_is_refused(
    fleet: Fleet, doc: Doc, name: str, mutate: Mutation, code: str, lax_accepted: bool
) -> None:
    value = doc.value(fleet)
    payload = mutate(value, doc.int_field)
    assert payload != canonical_json(value)
    if lax_accepted:  # the hole this closes: the old parser took these bytes
        doc.model.model_validate_json(payload)
    with pytest.raises(FedgeError) as info:
        doc.verify(fleet, payload)
    assert info.value.code == code, (name, info.value)
    if code == NON_CANONICAL:
        assert isinstance(info.value, NonCanonicalPayloadError)
        assert isinstance(info.value, MalformedArtifactError | SecurityError)
    else:
        assert type(info.value) is ProtocolError
    assert "dev-a" not in info.value.message and "spec_version" not in info.value.message


@pytest.mark.parametrize("doc", DOCS[:2], ids=DOC_IDS[:2])
def test_signature_is_checked_before_the_payload_is_parsed(fleet: Fleet, doc: Doc) -> None:
    """V1/K1 first: a non-canonical payload under a bad signature is a bad signature."""
    value = doc.value(fleet)
    good = canonical_json(value)
    env = sign_envelope(
        MANIFEST_TYPE if doc.name == "manifest" else COMMAND_TYPE,
        good,
        fleet.release if doc.name == "manifest" else fleet.coordinator,
        certificate=fleet.release_cert if doc.name == "manifest" else fleet.coordinator_cert,
    )
    forged = env.model_copy(update={"payload": b64encode(json.dumps(value).encode())})
    with pytest.raises(BadSignatureError):
        if doc.name == "manifest":
            verify_manifest(
                forged, fleet.trust(), device_id="dev-a", hardware_id=HW, floor_version=1, now=NOW
            )
        else:
            verify_command(forged, fleet.trust(), device_id="dev-a", last_seq=0, now=NOW)


def test_non_canonical_certificate_is_refused_even_before_its_root_signature(
    fleet: Fleet,
) -> None:
    """T2 reads the key id before T4 checks the root: the same strict parser refuses it."""
    by_other_key = fleet.cert(fleet.release, by=fleet.coordinator)  # not the pinned root
    value = json.loads(by_other_key.payload_bytes())
    cert_env = sign_envelope(CERTIFICATE_TYPE, json.dumps(value).encode(), fleet.coordinator)
    env = fleet.sign(fleet.build(artifact(), 2).manifest, fleet.release, cert_env)
    with pytest.raises(NonCanonicalPayloadError):
        verify_manifest(
            env, fleet.trust(), device_id="dev-a", hardware_id=HW, floor_version=1, now=NOW
        )


def test_non_canonical_revocation_list_is_ignored_when_piggy_backed(fleet: Fleet) -> None:
    """A manifest's attached list that is not canonical can never change trust."""
    value = RevocationList(version=3, issued_at=NOW).model_dump(mode="json")
    bad = sign_envelope(REVOCATIONS_TYPE, json.dumps(value).encode(), fleet.root)
    trust = fleet.trust()
    assert trust.absorb_revocations(bad) is trust
    good = sign_revocations(fleet.root, RevocationList(version=3, issued_at=NOW))
    assert trust.absorb_revocations(good).revocations is not None


def test_strict_schema_keeps_enum_tuple_and_literal_fields_working(fleet: Fleet) -> None:
    """J2 from Python values: enums from JSON strings, tuples from arrays, spec_version 1."""
    m = fleet.build(artifact(), 2).manifest
    parsed = manifest_from_bytes(manifest_to_bytes(m))
    assert parsed == m and isinstance(parsed.hardware_ids, tuple)
    raw = json.loads(manifest_to_bytes(m))
    assert raw["purpose"] == "install"  # always in the signed bytes, so both sides agree
    for purpose in Purpose:
        again = manifest_from_bytes(canonical_json(raw | {"purpose": purpose.value}))
        assert again.purpose is purpose
    for change in (
        {"encoding": "ZSTD"},  # enum values are case-sensitive
        {"encoding": 1},
        {"precision": ["int8"]},
        {"hardware_ids": HW},  # a string is not an array
        {"hardware_ids": {HW: 1}},
        {"chunk_sha256": None},
        {"spec_version": 2},
        {"version": True},
        {"delta_base": "x"},
        {"content_keys": [["dev-a", "x"]]},
        {"purpose": "INSTALL"},  # the signed purpose is a closed, case-sensitive set
        {"purpose": "deploy"},
        {"purpose": None},
    ):
        with pytest.raises(ProtocolError) as info:
            manifest_from_bytes(canonical_json(raw | change))
        assert info.value.code == BAD_MESSAGE
    cert = certify_key(
        fleet.root, fleet.coordinator.verify_key, Role.COORDINATOR, issued_at=1, expires=2
    )
    parsed_cert = parse_signed_model(KeyCertificate, cert.payload_bytes(), what="certificate")
    assert parsed_cert.role is Role.COORDINATOR


def test_strict_schema_errors_never_echo_the_payload(fleet: Fleet) -> None:
    raw = json.loads(manifest_to_bytes(fleet.build(artifact(), 2).manifest))
    with pytest.raises(ProtocolError) as info:
        manifest_from_bytes(canonical_json(raw | {"model_id": "SECRET/value"}))
    assert "SECRET" not in info.value.message
    with pytest.raises(NonCanonicalPayloadError) as non:
        manifest_from_bytes(json.dumps(raw | {"model_id": "SECRET"}).encode())
    assert "SECRET" not in non.value.message


# --- parse_canonical on its own -----------------------------------------------------------


def test_integer_bounds() -> None:
    for n in (0, 1, -1, MAX_CANONICAL_INT, -MAX_CANONICAL_INT):
        assert parse_canonical(canonical_json(n)) == n
    for n in (MAX_CANONICAL_INT + 1, -MAX_CANONICAL_INT - 1, 10**30):
        with pytest.raises(NonCanonicalPayloadError, match="out of range"):
            parse_canonical(canonical_json(n))


def test_nesting_bound() -> None:
    ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_canonical(ok) is not None
    for deep in (MAX_DEPTH + 1, 100_000):
        with pytest.raises(NonCanonicalPayloadError, match="nested too deeply"):
            parse_canonical(b"[" * deep + b"]" * deep)
    with pytest.raises(NonCanonicalPayloadError, match="nested too deeply"):
        parse_canonical(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not JSON"),
        (b"01", "not JSON"),
        (b"[1,]", "not JSON"),
        (b'{"a":1,"a":1}', "duplicate key"),
        (b'{"b":1,"a":1}', "canonical form"),
        (b'"\\u00E9"', "canonical form"),  # canonical hex escapes are lower-case
        (b'"\\/"', "canonical form"),
        (b'"\\u000a"', "canonical form"),  # canonical is "\n"
        (b'"\xc3\xa9"', "non-ASCII"),
        (b'"\xff"', "UTF-8"),
        (b'"\\udc00"', "surrogate"),
        (b"1.5", "floats"),
        (b"-0", "canonical form"),
        (b"NaN", "NaN"),
        (b'"\x01"', "not JSON"),  # raw control character inside a string
    ],
)
def test_refusals_name_the_rule(data: bytes, why: str) -> None:
    with pytest.raises(NonCanonicalPayloadError, match=why) as info:
        parse_canonical(data)
    assert info.value.code == NON_CANONICAL


def test_accepts_the_canonical_escapes() -> None:
    assert parse_canonical(b'"\\u00e9\\n\\"\\\\\\u0001"') == 'é\n"\\\x01'
    assert parse_canonical(b'"\\ud83d\\ude00"') == "\U0001f600"  # a surrogate *pair* is fine
    assert parse_canonical(b"[true,false,null]") == [True, False, None]


# --- hypothesis ----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_CANONICAL_INT, MAX_CANONICAL_INT)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_round_trip_of_generated_values(value: Any) -> None:
    data = canonical_json(value)
    if _depth(value) > MAX_DEPTH:
        with pytest.raises(NonCanonicalPayloadError):
            parse_canonical(data)
        return
    parsed = parse_canonical(data)
    assert parsed == value and canonical_json(parsed) == data


def _json_spellings(value: Any, sort: bool, compact: bool, ascii_only: bool) -> bytes:
    seps = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, sort_keys=sort, separators=seps, ensure_ascii=ascii_only).encode()


ANY_BYTES = st.one_of(
    st.binary(max_size=200),
    st.builds(_json_spellings, JSON_VALUES, st.booleans(), st.booleans(), st.booleans()),
    st.builds(
        lambda a, b, c: a + b + c,
        st.binary(max_size=3),
        st.builds(_json_spellings, JSON_VALUES, st.booleans(), st.just(True), st.booleans()),
        st.binary(max_size=3),
    ),
    st.text(alphabet='{}[]",:0123456789.eE-+ \\u/abtnNaIfy\x00é', max_size=40).map(str.encode),
)


@settings(max_examples=800, deadline=None)
@given(ANY_BYTES)
@example(b'{"a":1}')
@example(b'{"a":1,"a":2}')
@example(b"1e400")
@example(b"[" * 5000)
def test_any_bytes_give_a_typed_error_or_their_canonical_value(data: bytes) -> None:
    try:
        value = parse_canonical(data)
    except NonCanonicalPayloadError as exc:
        assert exc.code == NON_CANONICAL
    else:
        assert canonical_json(value) == data


@settings(max_examples=200, deadline=None)
@given(ANY_BYTES)
def test_any_bytes_through_the_model_parsers_give_typed_errors(data: bytes) -> None:
    for model in (Manifest, Command, KeyCertificate, RevocationList):
        with contextlib.suppress(NonCanonicalPayloadError, ProtocolError):
            parse_signed_model(model, data, what="payload")  # nothing else may escape
