"""Prometheus metrics of the coordinator service (one registry, exposed at ``/metrics``).

Defined in one place so the API, the ingestion worker and the background jobs update the
same series. Names follow Prometheus conventions (``_total`` counters, base units).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "DEPLOYMENT_DEVICES",
    "DEVICES",
    "INFERENCE_LATENCY",
    "INGEST_DROPPED",
    "INGEST_LAG",
    "INGEST_MESSAGES",
    "REGISTRY",
    "REQUESTS",
    "ROUND_METRIC",
    "VERSIONS_IN_FIELD",
]

REGISTRY = CollectorRegistry(auto_describe=True)

DEVICES = Gauge(
    "fedge_devices", "Enrolled, unrevoked devices by online state.", ["online"], registry=REGISTRY
)
VERSIONS_IN_FIELD = Gauge(
    "fedge_versions_in_field",
    "Devices serving each model version.",
    ["model", "version"],
    registry=REGISTRY,
)
DEPLOYMENT_DEVICES = Gauge(
    "fedge_deployment_devices",
    "Devices of each active deployment by outcome.",
    ["deployment", "outcome"],
    registry=REGISTRY,
)
INGEST_MESSAGES = Counter(
    "fedge_ingest_messages_total",
    "Device messages written to the database, by kind.",
    ["kind"],
    registry=REGISTRY,
)
INGEST_DROPPED = Counter(
    "fedge_ingest_dropped_total",
    "Device messages dropped by the ingestion worker, by reason.",
    ["reason"],
    registry=REGISTRY,
)
INGEST_LAG = Histogram(
    "fedge_ingest_lag_seconds",
    "From a message's arrival at the worker to its commit in the database.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
INFERENCE_LATENCY = Histogram(
    "fedge_inference_latency_seconds",
    "On-device inference latency (p50 of each telemetry window), by model version.",
    ["version"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
    registry=REGISTRY,
)
ROUND_METRIC = Gauge(
    "fedge_federation_round_metric",
    "Metrics of the latest federated round of each run.",
    ["run", "metric"],
    registry=REGISTRY,
)
REQUESTS = Counter(
    "fedge_api_requests_total",
    "Control API requests by method, route and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
