"""Device, enrollment and telemetry models of the control API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud.api.schemas_base import _Out
from shared.identifiers import IdentifierField

# --- devices ------------------------------------------------------------------------------


class DeviceOut(_Out):
    """An enrolled device and its latest known state."""

    device_id: str
    profile: str | None
    hardware_id: str
    groups: list[str]
    tags: list[str]
    broker_identity: str
    enrolled_at: float
    revoked_at: float | None
    online: bool | None
    last_seen: float | None
    state: str | None
    serving: dict[str, Any] | None
    model_version: str | None


class DevicePage(BaseModel):
    """One page of devices, ordered by id."""

    items: list[DeviceOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class StatusOut(_Out):
    """One status message of a device."""

    device_id: str
    msg_id: str
    received_at: float
    sent_at: float
    state: str
    payload: dict[str, Any]


class TelemetryOut(_Out):
    """One telemetry window of a device."""

    device_id: str
    msg_id: str
    received_at: float
    sent_at: float
    model_version: str | None
    requests: int
    errors: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_count: int
    payload: dict[str, Any]


class DeviceDetail(DeviceOut):
    """A device with its five newest statuses and its newest telemetry."""

    status_history: list[StatusOut]
    latest_telemetry: TelemetryOut | None


class DevicePatch(BaseModel):
    """New labels (absent: unchanged). Groups change the broker ACL."""

    model_config = ConfigDict(extra="forbid")

    groups: list[IdentifierField] | None = Field(default=None, max_length=64)
    tags: list[IdentifierField] | None = Field(default=None, max_length=64)


class EnrollmentTokenIn(BaseModel):
    """Who may enroll with the token, and as what."""

    model_config = ConfigDict(extra="forbid")

    device_id: IdentifierField
    hardware_id: IdentifierField
    profile: IdentifierField | None = None
    groups: list[IdentifierField] = Field(default_factory=list, max_length=64)
    tags: list[IdentifierField] = Field(default_factory=list, max_length=64)
    ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400, description="Validity in s.")


class EnrollmentTokenOut(BaseModel):
    """A one-time enrollment token: ``token`` is shown only in this response."""

    token: str = Field(description="The secret; give it to the device, it is not stored.")
    token_id: str
    device_id: str
    hardware_id: str
    profile: str | None
    groups: list[str]
    tags: list[str]
    created_at: float
    expires_at: float


class EnrollIn(BaseModel):
    """A device redeeming its enrollment token (the token is its only credential)."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=512)


class BrokerRefresh(BaseModel):
    """What happened to the broker configuration (None fields: no broker configured)."""

    configured: bool
    broker_reloaded: bool = False
    evicted: list[str] = Field(default_factory=list)
    refused: list[str] | None = None
    error: str | None = None


class DeviceBundle(BaseModel):
    """A device's enrollment bundle: write every file with ``file_mode`` (0600)."""

    device_id: str
    hardware_id: str
    groups: list[str]
    files: dict[str, str] = Field(description="File name → base64 of its bytes.")
    file_mode: Literal["0600"] = "0600"
    broker: BrokerRefresh


class DeviceRevoked(BaseModel):
    """A revoked device and the broker refresh that ended its access."""

    device: DeviceOut
    broker: BrokerRefresh


# --- telemetry ----------------------------------------------------------------------------


class LatestTelemetry(BaseModel):
    """A device's newest telemetry (None before it ever sent any)."""

    device_id: str
    telemetry: TelemetryOut | None


class LatestTelemetryPage(BaseModel):
    """Newest telemetry per device, devices ordered by id."""

    items: list[LatestTelemetry]
    next_cursor: str | None


class TelemetryAggregateOut(_Out):
    """Fleet telemetry of one model version over the window."""

    model_version: str | None
    devices: int
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


class TelemetryAggregates(BaseModel):
    """Aggregates over ``[since, now]``."""

    window_s: float
    since: float
    items: list[TelemetryAggregateOut]
