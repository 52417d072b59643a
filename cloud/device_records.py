"""Enrollment records of the fleet: what the coordinator keeps of each enrolled device.

:class:`DeviceRecord` holds public facts only (public keys, the broker password's hash, the
TLS certificate serial, groups, the revoked flag): private keys stay in the device's bundle
in the key home. The broker's ACL and CRL, the publisher and the federation are rendered
from these records.

Where the records live is a :class:`FleetRecords` backend: the fleet database in every
product path (``cloud.fleet.credentials.DatabaseFleetRecords``), or
:class:`JsonFleetRecords` — a ``fleet.json`` file, the default of a bare ``KeyHome`` (unit
tests, simulations) and the format of ``fedge keys export-fleet``.

A neutral module: ``cloud.keys`` and ``cloud.fleet`` both import it (neither imports the
other's backend, so there is no import cycle).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from cloud.keyfiles import read_json, write_json
from shared.errors import ConfigError, NotFoundError

__all__ = ["DeviceRecord", "FleetRecords", "JsonFleetRecords", "fleet_to_json"]


class DeviceRecord(BaseModel):
    """An enrolled device as the coordinator knows it (no private material)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    hardware_id: str
    groups: list[str]
    box_public: str  # base64 raw X25519 public key: content keys are sealed to it
    signing_public: str  # base64 raw Ed25519 public key
    password_hash: str  # kept for old bundles; the broker identifies clients by certificate
    enrolled_at: int
    revoked: bool = False
    # OpenSSH P-384 public key the SuperLink admits (``flwr supernode register``); empty
    # for devices enrolled before Deployment-Engine federation existed.
    supernode_public: str = ""
    # Serial (lowercase hex) of the device's TLS client certificate: what the broker's CRL
    # lists once the device is revoked. Empty for devices enrolled before it was recorded
    # (the serial is then read from the bundle's client.crt).
    tls_serial: str = ""


def fleet_to_json(fleet: dict[str, DeviceRecord]) -> dict[str, Any]:
    """The ``fleet.json`` form of ``fleet`` (device id → record as JSON)."""
    return {k: v.model_dump() for k, v in sorted(fleet.items())}


class FleetRecords(Protocol):
    """Where a key home keeps its enrollment records."""

    def load(self) -> dict[str, DeviceRecord]:
        """Every enrollment record by device id, revoked ones included."""
        ...

    def add(
        self,
        record: DeviceRecord,
        *,
        profile: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        """Store a new enrollment (``profile``/``tags``: fleet facts a backend may keep).

        Raises:
            ConfigError: code ``already_enrolled`` if the device has a record.
        """
        ...

    def put(self, records: Iterable[DeviceRecord]) -> None:
        """Insert or replace records (an import or a restore; idempotent, all or nothing).

        A device recorded revoked stays revoked.
        """
        ...

    def set_groups(self, device_id: str, groups: list[str]) -> None:
        """Replace an enrolled device's groups (``NotFoundError`` if unknown)."""
        ...

    def set_revoked(self, device_id: str, *, at: float) -> None:
        """Mark an enrolled device revoked (idempotent; ``NotFoundError`` if unknown)."""
        ...


@dataclass(frozen=True)
class JsonFleetRecords:
    """The records in one JSON file (0600: password hashes are worth a guessing attack).

    Profiles and tags are not kept here (they are fleet-database facts).
    """

    path: Path

    def load(self) -> dict[str, DeviceRecord]:
        """Every record in the file (none if there is no file)."""
        if not self.path.exists():
            return {}
        raw = read_json(self.path)
        return {k: DeviceRecord.model_validate(v) for k, v in raw.items()}

    def save(self, fleet: dict[str, DeviceRecord]) -> None:
        """Replace the file's content with ``fleet`` (atomically, 0600)."""
        write_json(self.path, fleet_to_json(fleet), private=True)

    def add(
        self,
        record: DeviceRecord,
        *,
        profile: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> None:
        """Append a new record (``profile``/``tags`` are not kept in the file)."""
        fleet = self.load()
        if record.device_id in fleet:
            raise ConfigError(
                f"device {record.device_id} is already enrolled", code="already_enrolled"
            )
        fleet[record.device_id] = record
        self.save(fleet)

    def put(self, records: Iterable[DeviceRecord]) -> None:
        """Insert or replace records (a revoked record stays revoked)."""
        fleet = self.load()
        for record in records:
            known = fleet.get(record.device_id)
            revoked = record.revoked or (known is not None and known.revoked)
            fleet[record.device_id] = record.model_copy(update={"revoked": revoked})
        self.save(fleet)

    def _update(self, device_id: str, **changes: Any) -> None:
        fleet = self.load()
        if device_id not in fleet:
            raise NotFoundError(f"device {device_id} is not enrolled")
        fleet[device_id] = fleet[device_id].model_copy(update=changes)
        self.save(fleet)

    def set_groups(self, device_id: str, groups: list[str]) -> None:
        """Replace the device's groups."""
        self._update(device_id, groups=list(groups))

    def set_revoked(self, device_id: str, *, at: float) -> None:
        """Mark the device revoked (the file keeps no revocation time)."""
        self._update(device_id, revoked=True)
