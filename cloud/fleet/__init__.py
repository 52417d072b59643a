"""The fleet: enrolled devices, their state and telemetry, tokens, deployments, audit log.

:class:`FleetStore` keeps it in the registry's database (tables in :mod:`cloud.fleet.schema`,
created by the migrations in ``cloud/migrations``); it returns the frozen records of
:mod:`cloud.fleet.records`.
"""

from cloud.fleet.records import (
    ApiToken,
    AuditEntry,
    Deployment,
    DeploymentState,
    Device,
    DeviceOutcome,
    EnrollmentToken,
    Page,
    Role,
    StatusRecord,
    TelemetryAggregate,
    TelemetryRecord,
)
from cloud.fleet.store import FleetStore

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Deployment",
    "DeploymentState",
    "Device",
    "DeviceOutcome",
    "EnrollmentToken",
    "FleetStore",
    "Page",
    "Role",
    "StatusRecord",
    "TelemetryAggregate",
    "TelemetryRecord",
]
