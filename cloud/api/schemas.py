"""Request and response models of the control API (the OpenAPI schema is built from them).

The models live in ``schemas_devices``, ``schemas_runs`` and ``schemas_admin``; this module
re-exports every public name so ``from cloud.api.schemas import X`` keeps working.
"""

from __future__ import annotations

from cloud.api.schemas_admin import (
    AuditEntryOut,
    AuditPage,
    CheckResult,
    Health,
    Readiness,
    TokenIn,
    TokenList,
    TokenOut,
    TokenSecretOut,
)
from cloud.api.schemas_devices import (
    BrokerRefresh,
    DeviceBundle,
    DeviceDetail,
    DeviceOut,
    DevicePage,
    DevicePatch,
    DeviceRevoked,
    EnrollIn,
    EnrollmentTokenIn,
    EnrollmentTokenOut,
    LatestTelemetry,
    LatestTelemetryPage,
    StatusOut,
    TelemetryAggregateOut,
    TelemetryAggregates,
    TelemetryOut,
)
from cloud.api.schemas_runs import (
    ArtifactOut,
    DeploymentIn,
    DeploymentOut,
    DeploymentPage,
    DeviceOutcomeOut,
    FederationRoundOut,
    FederationRunIn,
    FederationRunOut,
    FederationRunPage,
    VersionList,
    VersionOut,
)

__all__ = [
    "ArtifactOut",
    "AuditEntryOut",
    "AuditPage",
    "BrokerRefresh",
    "CheckResult",
    "DeploymentIn",
    "DeploymentOut",
    "DeploymentPage",
    "DeviceBundle",
    "DeviceDetail",
    "DeviceOut",
    "DeviceOutcomeOut",
    "DevicePage",
    "DevicePatch",
    "DeviceRevoked",
    "EnrollIn",
    "EnrollmentTokenIn",
    "EnrollmentTokenOut",
    "FederationRoundOut",
    "FederationRunIn",
    "FederationRunOut",
    "FederationRunPage",
    "Health",
    "LatestTelemetry",
    "LatestTelemetryPage",
    "Readiness",
    "StatusOut",
    "TelemetryAggregateOut",
    "TelemetryAggregates",
    "TelemetryOut",
    "TokenIn",
    "TokenList",
    "TokenOut",
    "TokenSecretOut",
    "VersionList",
    "VersionOut",
]
