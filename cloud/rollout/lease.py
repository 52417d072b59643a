"""The leader lease: exactly one coordinator process runs rollouts (and federation runs).

Every ``fedge cloud serve`` process serves the API; the one holding the lease also runs the
background work that must not run twice. Two mechanisms, by database:

* **PostgreSQL** — a session-level advisory lock, ``pg_try_advisory_lock(key)``, taken on a
  dedicated connection held for as long as the process leads. The server releases it the
  moment that session ends: a leader killed with SIGKILL closes its socket, so a standby's
  next try (every poll interval) succeeds. Advisory locks are server-wide, so the key is
  derived from the database and schema (:func:`schema_key`): one leader per deployment.
  :meth:`PostgresLease.alive` checks the connection on every poll (``SELECT 1``); a leader
  whose connection broke has lost the lock and stops leading at once, before the standby
  can take over.
* **SQLite** — the database is a local file, so its coordinators share a host: an
  exclusive ``flock`` on ``<database>.leader.lock``, released by the kernel when the process
  dies. An in-memory database has one process by definition: the lease is always held.

A standby takes over within one poll interval after the leader's session ends (plus the
time PostgreSQL needs to notice a vanished peer: immediate for a killed process on a
live host, the TCP keepalive timeout for a host that disappeared).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
from pathlib import Path
from typing import Protocol, TextIO

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "LEASE_KEY",
    "FileLease",
    "LeaderLease",
    "NullLease",
    "PostgresLease",
    "lease_for",
    "schema_key",
]

logger = logging.getLogger(__name__)

#: The advisory-lock key of the coordinator's leadership ("fedge-ld") when none is derived;
#: distinct from the migrations' lock in :mod:`cloud.db`.
LEASE_KEY = 0x66656467652D6C64


def schema_key(database: str, schema: str) -> int:
    """The lease key of one fedge database: advisory locks are server-wide, while a fedge
    deployment is one database schema, so two deployments on one server never share a
    leader (a signed 64-bit int, as ``pg_try_advisory_lock`` takes)."""
    digest = hashlib.blake2b(f"fedge-leader\x00{database}\x00{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class LeaderLease(Protocol):
    """A lease one process holds at a time."""

    def acquire(self) -> bool:
        """Try to take it without blocking; True if held now."""

    def alive(self) -> bool:
        """Whether it is still held (False: leadership lost; stop leading)."""

    def release(self) -> None:
        """Let it go (idempotent)."""


class PostgresLease:
    """``pg_try_advisory_lock`` on a dedicated connection of ``engine``.

    Args:
        engine: The coordinators' database.
        key: The lock key; None: :func:`schema_key` of the connection's database and schema.
    """

    def __init__(self, engine: Engine, key: int | None = None) -> None:
        self._engine, self.key = engine, key
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """Open the connection if needed and try the lock."""
        if self._conn is not None:
            return self.alive()
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            logger.warning("leader lease: database unreachable (%s)", exc.__class__.__name__)
            return False
        try:
            if self.key is None:
                database, schema = conn.execute(
                    text("SELECT current_database(), current_schema()")
                ).one()
                self.key = schema_key(str(database), str(schema))
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            )
            conn.commit()  # the lock is session-level: it outlives this transaction
        except SQLAlchemyError:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def alive(self) -> bool:
        """A round trip on the lease's own connection."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except SQLAlchemyError:
            logger.error("leader lease: its database connection broke; leadership lost")
            self._drop()
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):  # best effort
                conn.invalidate()  # never back to the pool: its session held the lock

    def release(self) -> None:
        """Unlock and close the connection."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.commit()
            conn.close()
        except SQLAlchemyError:
            self._drop()
        self._conn = None


class FileLease:
    """An exclusive ``flock`` on ``path`` (SQLite: the coordinators share the host)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: TextIO | None = None

    def acquire(self) -> bool:
        """Try the lock."""
        if self._handle is not None:
            return True
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self._path, "a")  # noqa: SIM115 - held until release()
        except OSError as exc:
            logger.warning("leader lease: cannot open %s (%s)", self._path, exc.strerror)
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def alive(self) -> bool:
        """A held flock cannot be lost while the process lives."""
        return self._handle is not None

    def release(self) -> None:
        """Close the file (releases the lock)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class NullLease:
    """Always held (an in-memory database: one process)."""

    def __init__(self) -> None:
        self._held = False

    def acquire(self) -> bool:
        """Held."""
        self._held = True
        return True

    def alive(self) -> bool:
        """Held once acquired."""
        return self._held

    def release(self) -> None:
        """Not held."""
        self._held = False


def lease_for(engine: Engine) -> LeaderLease:
    """The lease for the coordinators sharing ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        return PostgresLease(engine)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return FileLease(Path(database).with_name(Path(database).name + ".leader.lock"))
    return NullLease()
