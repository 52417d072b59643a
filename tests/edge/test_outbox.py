"""The SQLite outbox on its own: order, idempotent enqueue, capacity, durability."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.outbox import Outbox
from shared.errors import OutboxError


def test_fifo_order_and_ack(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        ids = [box.enqueue("t", f"m{i}".encode(), msg_id=f"msg-000{i}") for i in range(3)]
        assert [m.payload for m in box.pending()] == [b"m0", b"m1", b"m2"]
        box.ack(ids[0])
        assert [m.msg_id for m in box.pending()] == ["msg-0001", "msg-0002"]
        assert [m.msg_id for m in box.pending(exclude=frozenset({ids[1]}))] == ["msg-0002"]
        assert box.counter("delivered") == 1
        box.ack(ids[0])  # a duplicate PUBACK changes nothing
        assert box.counter("delivered") == 1 and len(box) == 2


def test_same_msg_id_is_stored_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        first = box.enqueue("t", b"a", msg_id="dup-00001")
        second = box.enqueue("t", b"b", msg_id="dup-00001")
        assert first == second and len(box) == 1
        assert box.pending()[0].payload == b"a"


def test_messages_survive_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        box.enqueue("fedge/v1/x", b"payload", msg_id="keep-0001", retain=True)
    with Outbox(tmp_path / "o.db") as box:
        (msg,) = box.pending()
        assert (msg.topic, msg.payload, msg.retain, msg.qos) == ("fedge/v1/x", b"payload", True, 1)


def test_capacity_drops_oldest_droppable_only(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_messages=3) as box:
        box.enqueue("status", b"s1", msg_id="status-01")
        for i in range(4):
            box.enqueue("telemetry", b"t", msg_id=f"telem-0{i}", droppable=True)
        assert [m.msg_id for m in box.pending()] == ["status-01", "telem-02", "telem-03"]
        assert box.counter("dropped") == 2


def test_corrupt_database_is_an_outbox_error(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError):
        Outbox(path)


def test_write_failure_is_an_outbox_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.close()
    with pytest.raises(OutboxError):
        box.enqueue("t", b"x", msg_id="closed-01")
