"""The fleet's state in the registry database (SQLAlchemy; SQLite by default, PostgreSQL by URL).

Devices with their enrollment records (public keys, broker password hash, TLS serial: what
the broker ACL/CRL is rendered from), one-time enrollment tokens, API tokens, device status
(latest and history), telemetry (a time series with a retention bound), deployments with
per-device outcomes, federated runs with their rounds and the audit log. Key material never
enters the database: private keys stay in the key home (0600); the database holds public facts
and hashes only (tokens are stored as SHA-256 of a 256-bit random secret: a fast hash is
enough for a secret that cannot be guessed).

Every method is one transaction and is safe to call from several threads (a session per
call). Writes of device messages are idempotent by ``(device_id, msg_id)``: an MQTT QoS 1
repeat is stored once.

INTERFACE CONTRACT (the API, the ingestion worker and the service code against it).

Design notes:

- Tables are in :mod:`cloud.fleet.schema`, created by the migrations
  (:func:`cloud.db.upgrade_database`, also run by the constructor: idempotent).
- Labels: ``devices.groups`` / ``devices.tags`` (JSON lists, returned as is) plus one row
  per label in ``device_labels(device_id, kind, value)`` indexed on ``(kind, value)``;
  ``list_devices(group=/tag=)`` is an indexed ``EXISTS`` there, identical SQL on SQLite and
  PostgreSQL. Labels are validated identifiers, deduplicated and sorted.
- Device messages are inserted in chunks with the dialect's ``INSERT … ON CONFLICT
  (device_id, msg_id) DO NOTHING``; the statement's row count is the number of new rows.
  Messages of unknown devices are dropped before the insert.
- Latest state moves only forward: a device's newest status of a batch (by ``sent_at``)
  replaces the stored state only if ``sent_at > last_status_at``; ``last_seen`` is the
  maximum receive time of any status or telemetry.
- Cursors: ``list_devices`` takes the last device id of the previous page (plain text).
  ``list_deployments`` / ``list_runs`` / ``list_audit`` are newest first by
  ``(created_at, deployment_id)`` resp. ``(created_at, run_id)`` resp. ``(at, id)``; their
  cursor is URL-safe base64 (no padding) of ``"<float repr of the time>:<id>"`` — treat it
  as opaque. A cursor that does not decode
  is a ``ConfigError`` (code ``invalid_cursor``).
- ``list_devices(online=False)`` matches devices not known to be online (``online`` false
  or never reported).

Error codes: ``ConfigError`` code ``already_enrolled`` (add_device), ``invalid_cursor``,
``invalid_argument``; ``InvalidIdentifierError`` / ``ReservedNameError`` for ids;
``InvalidTokenError`` codes ``invalid_token``, ``token_used``, ``token_expired``;
``NotFoundError`` (code ``not_found``); ``RegistryError`` (code ``registry_error``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from cloud.fleet._base import StoreBase, _first_line
from cloud.fleet.store_audit import AuditMixin
from cloud.fleet.store_dashboard import DashboardMixin
from cloud.fleet.store_deployments import DeploymentsMixin
from cloud.fleet.store_devices import DevicesMixin
from cloud.fleet.store_messages import MessagesMixin
from cloud.fleet.store_rollouts import RolloutsMixin
from cloud.fleet.store_runs import RunsMixin
from cloud.fleet.store_tokens import TokensMixin
from cloud.fleet.store_variants import VariantsMixin
from shared.errors import RegistryError

if TYPE_CHECKING:
    from cloud.registry.registry import Registry

__all__ = ["FleetStore"]


class FleetStore(
    DevicesMixin,
    TokensMixin,
    MessagesMixin,
    DeploymentsMixin,
    RunsMixin,
    AuditMixin,
    DashboardMixin,
    RolloutsMixin,
    VariantsMixin,
    StoreBase,
):
    """Fleet state on one database engine (shared with the model registry).

    Raises (every method): ``RegistryError`` for a database failure, ``NotFoundError`` for
    an unknown id, ``ConfigError`` (or a subclass) for invalid input, with a clear message.
    """

    def __init__(self, engine: Engine) -> None:
        from cloud.db import upgrade_database  # the tables exist whoever built the engine

        self.engine = engine
        try:
            upgrade_database(engine)
        except SQLAlchemyError as exc:
            raise RegistryError(
                f"cannot open fleet database: {exc.__class__.__name__}: {_first_line(exc)}"
            ) from exc
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_registry(cls, registry: Registry) -> FleetStore:
        """The fleet store on the registry's database."""
        return cls(registry.engine)
