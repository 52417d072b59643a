"""The key home's enrollment records in the fleet database.

:class:`DatabaseFleetRecords` is the :class:`~cloud.device_records.FleetRecords` backend of
every product path: the records (public keys, broker password hash, TLS serial, groups, the
revoked flag) are columns of the ``devices`` table (:mod:`cloud.fleet.schema`), so the
broker's ACL/CRL, the publisher and the API read one place. Groups live once, in
``devices.groups``; revocation is ``devices.revoked_at``.

:func:`database_key_home` builds such a key home; :func:`open_fleet_store` opens a store
for a command that has no registry open (connections are not pooled: each operation opens
and closes its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from cloud.device_records import DeviceRecord
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from shared.errors import RegistryError

__all__ = [
    "DatabaseFleetRecords",
    "database_key_home",
    "open_fleet_store",
    "records_in_store",
]


class DatabaseFleetRecords:
    """Enrollment records in a :class:`FleetStore` (given, or opened on first use)."""

    def __init__(self, store: FleetStore | Callable[[], FleetStore]) -> None:
        self._store = store if isinstance(store, FleetStore) else None
        self._open = None if isinstance(store, FleetStore) else store
        self._lock = threading.Lock()

    @property
    def store(self) -> FleetStore:
        """The fleet store (opened now if it was given as a factory)."""
        with self._lock:
            if self._store is None:
                assert self._open is not None
                self._store = self._open()
            return self._store

    def load(self) -> dict[str, DeviceRecord]:
        """Every enrollment record, revoked ones included."""
        return self.store.enrollment_records()

    def add(
        self,
        record: DeviceRecord,
        *,
        profile: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        """A new enrollment: the device's row with its record, profile and tags."""
        self.store.put_enrollment_record(record, new=True, profile=profile, tags=tags)

    def put(self, records: Iterable[DeviceRecord]) -> None:
        """Insert or replace records in one transaction (an import)."""
        self.store.put_enrollment_records(records)

    def set_groups(self, device_id: str, groups: list[str]) -> None:
        """``devices.groups`` (and the label rows): the one place groups live."""
        self.store.set_labels(device_id, groups=groups, tags=None)

    def set_revoked(self, device_id: str, *, at: float) -> None:
        """``devices.revoked_at`` (kept if already set)."""
        self.store.mark_revoked(device_id, at=at)


def open_fleet_store(database_url: str) -> FleetStore:
    """A fleet store on ``database_url`` (migrated), without a connection pool.

    Raises:
        RegistryError: the database cannot be opened or migrated.
    """
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(database_url, poolclass=NullPool)
    except (SQLAlchemyError, ValueError) as exc:
        raise RegistryError(f"cannot open fleet database: {exc}") from exc
    return FleetStore(engine)


def database_key_home(path: Path, store: FleetStore | Callable[[], FleetStore]) -> KeyHome:
    """The key home at ``path`` with its enrollment records in ``store``.

    An old ``fleet.json`` there is imported into the database on the first fleet operation
    (and renamed ``fleet.json.imported``).
    """
    return KeyHome(path, records=DatabaseFleetRecords(store))


def records_in_store(home: KeyHome, store: FleetStore) -> bool:
    """Whether ``home``'s enrollment records are rows of ``store``'s database (then a
    device's row, its groups and its revocation need no second write)."""
    records = home.records
    if not isinstance(records, DatabaseFleetRecords):
        return False
    mine = records.store.engine.url
    return bool(records.store is store or mine == store.engine.url)
