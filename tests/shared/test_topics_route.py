"""``topics.route``: the one topic grammar every receiver uses (classes 1 and 6 of issue 9).

Any string in gives a :class:`Route` or a :class:`ProtocolError`, never another exception;
what it accepts is exactly what the builders produce.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ProtocolError
from shared.protocol import topics
from shared.protocol.topics import DeviceLeaf, TopicKind, route

AID = "0123456789abcdef" * 2


@pytest.mark.parametrize("leaf", list(DeviceLeaf))
def test_every_device_topic_routes_back_to_its_builder(leaf: DeviceLeaf) -> None:
    built = f"fedge/v1/devices/hub-1/{leaf.value}"
    parsed = route(built)
    assert (parsed.kind, parsed.device_id, parsed.leaf) == (TopicKind.DEVICE, "hub-1", leaf)


def test_chunk_and_group_topics_route() -> None:
    parsed = route(topics.artifact_chunk(AID, 1023))
    assert (parsed.kind, parsed.artifact_id, parsed.index) == (TopicKind.CHUNK, AID, 1023)
    group = route(topics.group_cmd("kitchen"))
    assert (group.kind, group.group) == (TopicKind.GROUP_CMD, "kitchen")


@pytest.mark.parametrize(
    "bad",
    [
        f"fedge/v1/artifacts/{AID}/chunks/²",  # isdigit() is True, int() raises
        f"fedge/v1/artifacts/{AID}/chunks/١",  # int() would say 1
        f"fedge/v1/artifacts/{AID}/chunks/01",  # not the canonical decimal
        f"fedge/v1/artifacts/{AID}/chunks/-1",
        f"fedge/v1/artifacts/{AID}/chunks/+1",
        f"fedge/v1/artifacts/{AID}/chunks/1024",  # above MAX_CHUNKS - 1
        f"fedge/v1/artifacts/{AID}/chunks/1\n",
        f"fedge/v1/artifacts/{AID.upper()}/chunks/1",
        "fedge/v1/artifacts/abc/chunks/1",
        "fedge/v1/devices/hub-1\n/status",
        "fedge/v1/devices/hub-1/status/",
        "fedge/v1/devices/hub-1/status/x",
        "fedge/v1/devices/+/status",
        "fedge/v1/devices/#",
        "fedge/v2/devices/hub-1/status",
        "/fedge/v1/devices/hub-1/status",
        "fedge/v1/groups/kitchen/status",
        "x" * 10_000,
        "",
    ],
)
def test_malformed_topics_are_refused(bad: str) -> None:
    with pytest.raises(ProtocolError):
        route(bad)


@given(st.text(max_size=200))
def test_any_string_routes_or_raises_protocol_error(text: str) -> None:
    try:
        parsed = route(text)
    except ProtocolError:
        return
    # Whatever is accepted is exactly what the builders would have produced.
    if parsed.kind is TopicKind.DEVICE:
        assert parsed.device_id is not None and parsed.leaf is not None
        assert text == f"fedge/v1/devices/{parsed.device_id}/{parsed.leaf.value}"
    elif parsed.kind is TopicKind.CHUNK:
        assert parsed.artifact_id is not None and parsed.index is not None
        assert text == topics.artifact_chunk(parsed.artifact_id, parsed.index)
    else:
        assert parsed.group is not None and text == topics.group_cmd(parsed.group)
    assert text.isascii()


@given(st.integers(min_value=0, max_value=1023))
def test_chunk_indices_round_trip(index: int) -> None:
    assert route(topics.artifact_chunk(AID, index)).index == index
