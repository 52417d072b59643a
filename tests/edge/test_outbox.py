"""The SQLite outbox on its own: order, idempotent enqueue, capacity, durability, file modes."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
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


@pytest.fixture()
def loose_umask() -> Iterator[None]:
    """A typical 022 umask, so a file created without an explicit mode would be 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _side(path: Path, suffix: str) -> Path:
    return Path(f"{path}{suffix}")


@pytest.mark.usefixtures("loose_umask")
def test_database_and_wal_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        for i in range(3):
            box.enqueue("t", b"secret telemetry", msg_id=f"perm-000{i}")
        box.ack(box.pending()[0].row_id)
        # WAL mode: the side files exist while the outbox is open and has written.
        for p in (path, _side(path, "-wal"), _side(path, "-shm")):
            assert _mode(p) == 0o600, p


@pytest.mark.usefixtures("loose_umask")
def test_created_directories_are_owner_only(tmp_path: Path) -> None:
    before = _mode(tmp_path)
    with Outbox(tmp_path / "state" / "edge" / "o.db") as box:
        box.enqueue("t", b"x", msg_id="perm-dir01")
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(tmp_path / "state" / "edge") == 0o700
    assert _mode(tmp_path) == before  # an existing directory is not the outbox's to change


@pytest.mark.usefixtures("loose_umask")
def test_existing_world_readable_files_are_tightened_at_open(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    # An outbox written by an older version: 0644 database, and a second connection that
    # keeps the WAL side files alive so they are there, also 0644, when the outbox opens.
    with Outbox(path) as box:
        box.enqueue("t", b"old", msg_id="perm-old01")
    other = sqlite3.connect(path)
    try:
        other.execute("PRAGMA journal_mode=WAL")
        other.execute("INSERT INTO counters(name, value) VALUES ('x', 1)")
        other.commit()
        stale_journal = _side(path, "-journal")
        stale_journal.write_bytes(b"")  # an empty journal is not hot: SQLite ignores it
        files = [path, _side(path, "-wal"), _side(path, "-shm"), stale_journal]
        for p in files:
            os.chmod(p, 0o644)
        with Outbox(path) as box:
            assert [m.msg_id for m in box.pending()] == ["perm-old01"]
            for p in files:
                assert _mode(p) == 0o600, p
    finally:
        other.close()
