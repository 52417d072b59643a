"""Which model variant each device class gets — or why it gets none.

A device class is a profile (``firmware_configs/*.toml``): accepted precisions, the largest
model file it takes (``max_model_bytes``), its RAM and optionally a latency target. For
each class, every *approved* TFLite artifact of the candidate versions is checked against
those budgets; the class gets the most accurate version that has a fitting variant, and in
it the smallest fitting artifact (what the publisher sends, ``docs/protocol.md`` Q3). A
class that nothing fits is reported with the reason per artifact and gets nothing — the
publisher's own ``max_model_bytes`` check would refuse an oversize model anyway.

Latencies are the cloud host's LiteRT measurements (single thread): a device is slower,
so a latency target is checked against them as a lower bound, never as a promise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cloud.registry import Registry, VersionInfo
from shared.profiles import DeviceProfile

#: The interpreter maps the model and allocates arenas next to it; the profile validator
#: already holds ``max_model_bytes`` to half the RAM, this keeps model + arenas in budget.
RAM_FACTOR = 2


@dataclass(frozen=True)
class Variant:
    """One approved artifact considered for a class."""

    version: str
    precision: str
    bytes: int
    accuracy: float
    latency_median_ms: float
    fits: bool
    reason: str | None = None


@dataclass
class ClassPlan:
    """The outcome for one device class."""

    profile: str
    chosen: Variant | None
    reason: str | None
    considered: list[Variant] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def check_variant(version: VersionInfo, art: Any, profile: DeviceProfile) -> Variant:
    """Judge one approved artifact against one profile's budgets."""
    metrics = art.metrics
    reasons = []
    if art.precision not in {str(p) for p in profile.precisions}:
        reasons.append(f"precision {art.precision} not accepted")
    if art.bytes > profile.max_model_bytes:
        reasons.append(f"{art.bytes:,} bytes > max_model_bytes {profile.max_model_bytes:,}")
    if art.bytes * RAM_FACTOR > profile.ram_mb * 1024 * 1024:
        reasons.append(f"{art.bytes:,} bytes x{RAM_FACTOR} exceed ram_mb {profile.ram_mb}")
    latency = float(metrics.get("latency_median_ms", 0.0))
    target = profile.latency_target_ms
    if target is not None and latency > target:
        reasons.append(f"{latency:.3f} ms (cloud host) > latency_target_ms {target}")
    return Variant(
        version.ref,
        art.precision,
        art.bytes,
        float(metrics.get("accuracy", 0.0)),
        latency,
        not reasons,
        "; ".join(reasons) or None,
    )


def plan_classes(
    registry: Registry, refs: list[str], profiles: list[DeviceProfile]
) -> list[ClassPlan]:
    """For each profile: the fitting variant of the most accurate candidate version, or
    the reason none fits (no approved artifact at all, or every one over a budget)."""
    versions = [registry.get_version(r) for r in refs]
    plans = []
    for profile in sorted(profiles, key=lambda p: p.name):
        considered = [
            check_variant(v, a, profile)
            for v in versions
            for a in v.artifacts
            if a.format == "tflite" and a.status == "approved"
        ]
        fitting = [c for c in considered if c.fits]
        if not considered:
            plans.append(
                ClassPlan(profile.name, None, "no approved TFLite artifact; quantize first")
            )
            continue
        if not fitting:
            why = "; ".join(f"{c.version} {c.precision}: {c.reason}" for c in considered)
            plans.append(ClassPlan(profile.name, None, f"nothing fits: {why}", considered))
            continue
        best_version = max(fitting, key=lambda c: c.accuracy).version
        chosen = min((c for c in fitting if c.version == best_version), key=lambda c: c.bytes)
        plans.append(ClassPlan(profile.name, chosen, None, considered))
    return plans
