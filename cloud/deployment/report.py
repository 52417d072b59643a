"""What one publish did: per-device outcomes, bytes on the wire and where the time went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["DeviceResult", "Outcome", "PublishReport"]


class Outcome(StrEnum):
    """Final per-device outcome of a publish."""

    COMMITTED = "committed"
    FAILED = "failed"
    TIMEOUT = "timeout"


@dataclass
class DeviceResult:
    """What happened on one device."""

    device_id: str
    outcome: Outcome = Outcome.TIMEOUT
    reason: str | None = None
    encoding: str | None = None
    base_version: int | None = None
    precision: str | None = None
    artifact_id: str | None = None
    #: The variant choice and why (``Choice.to_dict``: basis, medians, excluded, explain).
    choice: dict[str, object] | None = None


@dataclass
class PublishReport:
    """Per-device results and totals of one publish."""

    version: str
    artifact_sha256: str
    devices: dict[str, DeviceResult]
    bytes_sent: int = 0
    seconds: float = 0.0
    # Device messages dropped during the publish, by reason (identity_mismatch, malformed,
    # bad_topic, duplicate): each is evidence of a fault or an attack, never believed.
    dropped: dict[str, int] = field(default_factory=dict)
    # Seconds from the start of the publish at which each phase ended (first occurrence):
    # discovered, built, manifests_sent, chunks_sent; tells an operator where time went.
    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic, repr=False)
    #: What the publish asked of devices (§15): ``install``, ``shadow`` or ``trial``; a
    #: ``committed`` outcome means the purpose is reached (serving / held / timed).
    purpose: str = "install"
    #: Device → what its trials did (timed / failed / refused / timed_out precisions).
    trials: dict[str, dict[str, object]] = field(default_factory=dict)

    def mark(self, phase: str) -> None:
        """Record the first time ``phase`` was reached."""
        self.phases.setdefault(phase, round(time.monotonic() - self.started, 3))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (no key material)."""
        return {
            "version": self.version,
            "purpose": self.purpose,
            "artifact_sha256": self.artifact_sha256,
            "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
            "phases": dict(self.phases),
            "dropped_messages": dict(self.dropped),
            "devices": {d: vars(r) | {"outcome": str(r.outcome)} for d, r in self.devices.items()},
            "trials": dict(self.trials),
        }
