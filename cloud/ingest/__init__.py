"""Ingestion of device status and telemetry into the fleet database (``fedge-ingest``).

:class:`IngestWorker` holds the broker's ``fedge-ingest`` session (read-only: device status
and telemetry), writes what devices report to :class:`cloud.fleet.store.FleetStore` in
batches, and acknowledges each message only once its batch is committed: at-least-once
from device to database, made exactly-once by the store's idempotence on ``msg_id``.
:class:`RetentionJob` prunes telemetry past its retention bound.
"""

from __future__ import annotations

from cloud.ingest.attribution import DeviceTelemetry, IngestAttribution
from cloud.ingest.retention import DEFAULT_RETENTION_S, RetentionJob
from cloud.ingest.worker import IngestStats, IngestWorker

__all__ = [
    "DEFAULT_RETENTION_S",
    "DeviceTelemetry",
    "IngestAttribution",
    "IngestStats",
    "IngestWorker",
    "RetentionJob",
]
