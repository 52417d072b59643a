"""Response models of ``/v1/dashboard`` and of the event stream's payloads."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cloud.api.schemas_base import _Out

__all__ = [
    "CountOut",
    "DashboardSummary",
    "EventsSession",
    "FleetSummaryOut",
    "LatencyHistogramOut",
    "LatencyVersionOut",
]


class CountOut(_Out):
    """Unrevoked devices sharing one value (``key`` None: not reported yet)."""

    key: str | None
    devices: int
    online: int


class FleetSummaryOut(_Out):
    """The fleet at a glance (unrevoked devices; ``revoked`` counts the others)."""

    devices: int
    online: int
    offline: int
    never_reported: int
    revoked: int
    last_seen: float | None
    profiles: list[CountOut]
    versions: list[CountOut]
    states: list[CountOut]


class LatencyHistogramOut(_Out):
    """Requests of one model version by the p50 of the telemetry window that served them."""

    model_version: str | None
    counts: list[int] = Field(description="One count per bucket of `bucket_edges_ms`, + rest.")
    windows: int


class LatencyVersionOut(BaseModel):
    """Latency of one model version: request-weighted percentiles and the histogram."""

    model_version: str | None
    devices: int
    requests: int
    errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    histogram: list[int]


class DashboardSummary(BaseModel):
    """Everything the dashboard's header, fleet breakdowns and latency panel show."""

    generated_at: float
    window_s: float
    fleet: FleetSummaryOut
    bucket_edges_ms: list[float]
    latency: list[LatencyVersionOut]


class EventsSession(BaseModel):
    """The event-stream cookie was set (HttpOnly: the page never sees its value)."""

    stream: str = Field(description="Open this URL with EventSource (same origin).")
    expires_at: float = Field(description="Connect before this (Unix seconds).")
