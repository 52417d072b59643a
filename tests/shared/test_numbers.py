"""The one ASCII number grammar (rule N1) and the places that read numbers from the wire."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge.messaging.client import parse_broker_url
from edge.updater import Updater, UpdateReport
from edge.updater.downloads import DownloadStore
from edge.updater.routing import dispatch
from shared.artifacts import ArtifactAssembler
from shared.errors import ConfigError, ProtocolError
from shared.numbers import parse_ascii_uint
from shared.protocol import topics
from shared.protocol.codec import encode_chunk, encode_message
from shared.protocol.messages import ManifestMessage, UpdateOutcome
from shared.protocol.topics import artifact_chunk, parse_chunk_topic
from tests.helpers.release import HW, NOW, Fleet, artifact

#: Characters for which str.isdigit()/isdecimal() or int() say "digit" but are not ASCII.
UNICODE_DIGITS = ["²", "³", "¹", "١", "٣", "۴", "५", "০", "๑", "１", "𝟙", "①"]
CANONICAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


def test_accepts_canonical_ascii_decimals() -> None:
    assert parse_ascii_uint("0", what="n", max_value=10) == 0
    assert parse_ascii_uint("7", what="n", max_value=10) == 7
    assert parse_ascii_uint("10", what="n", max_value=10) == 10
    assert parse_ascii_uint("1023", what="n", max_value=1023) == 1023
    assert parse_ascii_uint("0007", what="n", max_value=9999, width=4) == 7
    assert parse_ascii_uint("0000", what="n", max_value=9999, width=4) == 0


@pytest.mark.parametrize(
    "text",
    ["", "-1", "+1", " 1", "1 ", "1\n", "01", "00", "1_0", "1.0", "1e3", "0x1", "11", "٣"]
    + UNICODE_DIGITS
    + [f"1{d}" for d in UNICODE_DIGITS],
)
def test_refuses_everything_else(text: str) -> None:
    with pytest.raises(ProtocolError, match="invalid n"):
        parse_ascii_uint(text, what="n", max_value=10)


def test_unicode_digits_fool_python_but_not_the_grammar() -> None:
    assert "²".isdigit() and int("١٢") == 12  # the trap this module exists for
    for d in UNICODE_DIGITS:
        with pytest.raises(ProtocolError):
            parse_ascii_uint(d, what="n", max_value=10**6)


def test_fixed_width_needs_exactly_width_digits() -> None:
    for bad in ("007", "00007", "00a7", "٠٠٠٧", "+007"):
        with pytest.raises(ProtocolError):
            parse_ascii_uint(bad, what="n", max_value=9999, width=4)
    with pytest.raises(ProtocolError, match="above 5"):
        parse_ascii_uint("0006", what="n", max_value=5, width=4)


def test_errors_never_echo_more_than_a_short_repr() -> None:
    secret = "9" * 5000 + "SECRET"
    with pytest.raises(ProtocolError) as info:
        parse_ascii_uint(secret, what="n", max_value=10**30)
    assert "SECRET" not in info.value.message and len(info.value.message) < 100
    with pytest.raises(ProtocolError, match="expected text"):
        parse_ascii_uint(b"12", what="n", max_value=99)  # type: ignore[arg-type]


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=12), st.integers(0, 10**12))
@example("²", 10)
@example("١٢", 100)
@example("0", 0)
def test_any_text_gives_an_int_or_protocol_error(text: str, max_value: int) -> None:
    try:
        value = parse_ascii_uint(text, what="n", max_value=max_value)
    except ProtocolError:
        assert CANONICAL.fullmatch(text) is None or int(text) > max_value
    else:
        # Accepted strings are exactly the canonical ASCII decimals within the bound.
        assert CANONICAL.fullmatch(text) is not None and str(value) == text
        assert 0 <= value <= max_value


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6))
def test_any_unicode_digit_string_is_refused_unless_ascii(text: str) -> None:
    try:
        value = parse_ascii_uint(text, what="n", max_value=10**6)
    except ProtocolError:
        assert not (text.isascii() and CANONICAL.fullmatch(text))
    else:
        assert text.isascii() and str(value) == text


# --- the wire: chunk topics, broker URLs, stored chunk names -----------------------------

AID = "ab" * 16


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_chunk_topic_with_unicode_digit_is_refused(digit: str) -> None:
    for index in (digit, f"1{digit}", f"{digit}0"):
        with pytest.raises(ProtocolError):
            parse_chunk_topic(f"fedge/v1/artifacts/{AID}/chunks/{index}")


def test_chunk_topic_index_grammar() -> None:
    assert parse_chunk_topic(artifact_chunk(AID, 0)) == (AID, 0)
    assert parse_chunk_topic(artifact_chunk(AID, 1023)) == (AID, 1023)
    for bad in ("01", "+1", " 1", "1024", "999999", "1\n", ""):
        with pytest.raises(ProtocolError):
            parse_chunk_topic(f"fedge/v1/artifacts/{AID}/chunks/{bad}")


def test_broker_port_uses_the_ascii_grammar() -> None:
    assert parse_broker_url("mqtt://h:1884").port == 1884
    assert parse_broker_url("mqtts://h").port == 8883
    assert parse_broker_url("mqtt://u:p@[::1]:9").port == 9
    for bad in ("h:١٨٨٣", "h:²", "h:01883", "h:0", "h:65536", "h:+1", "h:", "h: 1"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


def test_stored_chunk_with_unicode_digit_in_its_name_is_discarded(tmp_path: Path) -> None:
    fleet = Fleet()
    release = fleet.build(artifact(6000), 2, chunk_size=256)
    assert release.manifest.chunk_count > 2
    store = DownloadStore(tmp_path)
    d = tmp_path / release.manifest.artifact_id
    d.mkdir()
    store.save_chunk(release.chunks[1])
    (d / "chunk-000١.bin").write_bytes(release.chunks[1].body)  # \d would have matched
    (d / "chunk-0000.bin").write_bytes(b"junk")  # fails A3: discarded as before
    state = store.restore(ArtifactAssembler(release.manifest))
    assert sorted(p.name for p in d.glob("chunk-*.bin")) == ["chunk-0001.bin"]
    assert state.received == frozenset({1})


# --- the updater keeps working after a hostile topic -------------------------------------


@dataclass
class _Link:
    published: list[tuple[str, bytes]] = field(default_factory=list)
    subscriptions: set[str] = field(default_factory=set)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def subscribe(self, topic: str) -> None:
        self.subscriptions.add(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.discard(topic)


def test_dispatch_survives_unicode_digit_chunk_topic(tmp_path: Path) -> None:
    fleet = Fleet()
    release = fleet.build(artifact(9000, seed=5), 1, chunk_size=2048)
    reports: list[UpdateReport] = []
    served: list[str] = []
    updater = Updater(
        device_id="dev-a",
        hardware_id=HW,
        box_key=fleet.devices["dev-a"],
        trust=fleet.trust(),
        max_model_bytes=1_000_000,
        precisions=("int8",),
        state_dir=tmp_path / "s",
        link=_Link(),
        activate=lambda _path, version: served.append(version),
        on_status=reports.append,
        now=lambda: float(NOW),
    )
    env = fleet.sign(release.manifest.for_devices(["dev-a"]))
    manifest = encode_message(ManifestMessage(device_id="dev-a", sent_at=NOW, envelope=env))

    def send(topic: str, payload: bytes) -> bool:
        return dispatch(updater, topic, payload, device_id="dev-a", groups=())

    assert send(topics.device_manifest("dev-a"), manifest)
    first = encode_chunk(release.chunks[0])
    aid = release.manifest.artifact_id
    for digit in ("²", "١", "٣", "１"):
        for index in (digit, f"1{digit}", f"{digit}1"):
            # Before rule N1, '²'.isdigit() passed and int('²') raised in the device thread.
            assert send(f"fedge/v1/artifacts/{aid}/chunks/{index}", first) is False
    for chunk in release.chunks:  # later valid input is still handled
        assert send(artifact_chunk(chunk.artifact_id, chunk.index), encode_chunk(chunk))
    assert served == ["1"]
    assert [r.outcome for r in reports] == [UpdateOutcome.DOWNLOADING, UpdateOutcome.COMMITTED]
