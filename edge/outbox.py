"""Durable store-and-forward for everything the device sends (status, telemetry, events).

Guarantee, stated precisely:

* **No loss.** A message is committed to SQLite (WAL, ``synchronous=FULL``) *before* any
  attempt to publish it, and removed only after the broker's PUBACK for it (QoS 1). A
  crash, SIGKILL or power cut at any point leaves it in the outbox, and the next agent
  process sends it again. Messages go out in the order they were enqueued.
* **At-least-once on the wire, exactly-once for a deduplicating receiver.** If the agent
  dies after the broker accepted a message but before the PUBACK was recorded, or the
  connection drops with a message in flight, that message is sent again with the *same
  bytes*, including the same ``msg_id``. A receiver that drops repeated ``msg_id`` values
  (:class:`shared.protocol.dedupe.Deduplicator`) processes each message exactly once.
  True exactly-once on the wire would need broker-side session state that outlives the
  process (MQTT QoS 2 state is kept in paho's memory), which no crash-safe client has.
* **Bounded.** At most ``max_messages`` are kept; when full, the oldest *droppable*
  messages (telemetry) are dropped first and counted; non-droppable ones (status) are
  never dropped.

Single-threaded by design: the agent's main loop owns the outbox; MQTT callbacks only
queue PUBACK events for it.

**Private on disk.** Payloads are device status and telemetry, so the database and its
``-wal``/``-shm``/``-journal`` companions are owner-only (``0600``) like the rest of the
device state, and directories the outbox creates are ``0700``. Looser modes left by an
older version are tightened every time the outbox opens.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from shared.errors import OutboxError

__all__ = ["Outbox", "OutboxMessage"]

logger = logging.getLogger(__name__)

_FILE_MODE = 0o600
_DIR_MODE = 0o700
# SQLite's side files: WAL mode uses -wal and -shm, a rollback journal (used while a fresh
# database switches to WAL, or by an older build) is -journal.
_COMPANIONS = ("-wal", "-shm", "-journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT    NOT NULL UNIQUE,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    droppable  INTEGER NOT NULL,
    created_at REAL    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, as it will be published."""

    row_id: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    attempts: int


class Outbox:
    """A SQLite-backed FIFO of messages waiting for a PUBACK.

    Args:
        path: Database file (created with its directory if missing).
        max_messages: Capacity; see the module docstring for what happens when full.

    Raises:
        OutboxError: the database cannot be opened or is not an outbox.
    """

    def __init__(self, path: str | Path, *, max_messages: int = 10_000) -> None:
        self.path = Path(path)
        self._max = max_messages
        try:
            _make_private_dirs(self.path.parent)
            _create_private(self.path)
            self._tighten()
            # One user at a time by design (the agent loop), but it may be built on one
            # thread and run on another, hence check_same_thread=False.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=5.0, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed message survives a power cut too, not only a process kill.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # SQLite gives new side files the database's mode, but ones left by an earlier
            # run (or created before the main file was tightened) keep theirs.
            self._tighten()
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    def _tighten(self) -> None:
        """Make the database and any side files that exist owner-only (0600)."""
        for name in (self.path, *(Path(f"{self.path}{suffix}") for suffix in _COMPANIONS)):
            try:
                if (os.stat(name).st_mode & 0o777) != _FILE_MODE:
                    os.chmod(name, _FILE_MODE)
            except FileNotFoundError:
                continue  # side files come and go with checkpoints and transactions
            except PermissionError:
                # Owned by another user: not ours to change, and refusing to open would
                # stop the device from reporting at all. Say so once per open.
                logger.warning("cannot restrict permissions of %s (not its owner)", name)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def enqueue(
        self,
        topic: str,
        payload: bytes,
        *,
        msg_id: str,
        qos: int = 1,
        retain: bool = False,
        droppable: bool = False,
    ) -> int:
        """Store a message durably; return its row id.

        Enqueuing the same ``msg_id`` twice stores it once (the first copy wins).

        Raises:
            OutboxError: the write fails (disk full, read-only, corrupt database).
        """
        try:
            with self._tx():
                cur = self._db.execute(
                    "INSERT INTO outbox(msg_id, topic, payload, qos, retain, droppable, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(msg_id) DO NOTHING",
                    (msg_id, topic, payload, qos, int(retain), int(droppable), time.time()),
                )
                row_id = cur.lastrowid if cur.rowcount else None
                self._enforce_capacity()
            if row_id is None:
                row = self._db.execute(
                    "SELECT id FROM outbox WHERE msg_id = ?", (msg_id,)
                ).fetchone()
                row_id = row[0] if row else -1
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot store message in outbox: {exc}") from exc
        return int(row_id)

    def _enforce_capacity(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        excess = count - self._max
        if excess <= 0:
            return
        cur = self._db.execute(
            "DELETE FROM outbox WHERE id IN "
            "(SELECT id FROM outbox WHERE droppable = 1 ORDER BY id LIMIT ?)",
            (excess,),
        )
        if cur.rowcount:
            self._bump("dropped", cur.rowcount)
            logger.warning("outbox full: dropped %d oldest telemetry messages", cur.rowcount)

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def pending(
        self, *, limit: int = 100, exclude: frozenset[int] = frozenset()
    ) -> list[OutboxMessage]:
        """The oldest undelivered messages, in enqueue order, skipping rows in ``exclude``.

        Raises:
            OutboxError: the read fails.
        """
        try:
            rows = self._db.execute(
                "SELECT id, msg_id, topic, payload, qos, retain, attempts FROM outbox "
                "ORDER BY id LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read outbox: {exc}") from exc
        out = [
            OutboxMessage(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6])
            for r in rows
            if r[0] not in exclude
        ]
        return out[:limit]

    def mark_attempt(self, row_id: int) -> None:
        """Record a publish attempt (for diagnostics)."""
        try:
            self._db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (row_id,))
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot update outbox: {exc}") from exc

    def ack(self, row_id: int) -> None:
        """The broker acknowledged the message: remove it for good."""
        try:
            with self._tx():
                cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                if cur.rowcount:
                    self._bump("delivered", 1)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot update outbox: {exc}") from exc

    def __len__(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def counter(self, name: str) -> int:
        """A lifetime counter: ``delivered`` or ``dropped``."""
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents as 0700; existing ones are left alone."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            continue  # created concurrently: someone else's, keep its mode
        os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by the umask


def _create_private(path: Path) -> None:
    """Create an empty ``path`` as 0600 if it does not exist (SQLite accepts an empty file).

    Creating it here rather than letting SQLite do it avoids a window in which the
    database exists with the umask's (usually world-readable) mode.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on error) in autocommit mode."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
