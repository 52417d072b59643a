"""Enrollment records of a key home: where they live, the one-time ``fleet.json`` import.

Part of :class:`cloud.keys.KeyHome` (mixed in by :class:`FleetMixin`); use it through
:mod:`cloud.keys`. This module imports nothing of ``cloud.keys`` (no cycle).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.device_records import DeviceRecord, FleetRecords, JsonFleetRecords, fleet_to_json
from cloud.keyfiles import write_json

# The key home's one logger: records keep the ``cloud.keys`` name they always had.
log = logging.getLogger("cloud.keys")

#: What a database-backed key home renames an imported ``fleet.json`` to.
IMPORTED_SUFFIX = ".imported"


class FleetMixin:
    """The enrollment records of :class:`cloud.keys.KeyHome` (``records`` or ``fleet.json``)."""

    if TYPE_CHECKING:
        path: Path
        records: FleetRecords | None

    @property
    def fleet_path(self) -> Path:
        """The JSON fleet file: the records of a key home without a database, or one to
        import into the database."""
        return self.path / "fleet.json"

    def _fleet_records(self) -> FleetRecords:
        if self.records is None:
            return JsonFleetRecords(self.fleet_path)
        if self.fleet_path.exists():
            self.import_json_fleet()
        return self.records

    def import_json_fleet(self) -> int:
        """Move the records of a ``fleet.json`` into the database backend (idempotent).

        Every record is stored in one transaction (a revoked device stays revoked), then the
        file is renamed ``fleet.json.imported``: an upgraded key home never loses a device,
        and a crash before the rename only imports the same records again. Called by every
        fleet operation of a database-backed key home; a no-op without a file or a database.

        Returns:
            How many records were imported.
        """
        if self.records is None or not self.fleet_path.exists():
            return 0
        legacy = JsonFleetRecords(self.fleet_path).load()
        self.records.put(legacy.values())
        target = self.fleet_path.with_name(self.fleet_path.name + IMPORTED_SUFFIX)
        # FileNotFoundError: another process imported the same file just now.
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.fleet_path, target)
        log.warning(
            "imported %d device record(s) from %s into the fleet database; the file is now %s "
            "(the records live in the database: `fedge keys export-fleet` writes a backup)",
            len(legacy),
            self.fleet_path,
            target.name,
        )
        return len(legacy)

    def fleet(self) -> dict[str, DeviceRecord]:
        """Enrolled devices by id (revoked ones included)."""
        return self._fleet_records().load()

    def export_fleet(self, path: Path) -> dict[str, Any]:
        """Write every enrollment record as ``fleet.json``-format JSON to ``path`` (0600).

        A backup: copied to ``keys/fleet.json`` of a database-backed key home, it is
        imported again (revocations are never undone by it).
        """
        fleet = self.fleet()
        write_json(path, fleet_to_json(fleet), private=True)
        log.info("exported %d device record(s) to %s", len(fleet), path)
        return {"path": str(path), "devices": len(fleet)}
