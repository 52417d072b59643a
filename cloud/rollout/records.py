"""What the fleet store returns about rollouts: frozen records, free of SQLAlchemy."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "CONTROL_ALLOWED",
    "CohortRecord",
    "Phase",
    "Rollout",
    "RolloutControl",
    "RolloutDevice",
    "RolloutEvent",
    "RolloutState",
    "ShadowRecord",
]


class RolloutState(StrEnum):
    """A rollout's lifecycle state (``completed``, ``aborted``, ``rolled_back`` are final)."""

    RUNNING = "running"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"

    @property
    def final(self) -> bool:
        """No more steps (only ``rollback`` of a completed rollout)."""
        return self in (RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.ROLLED_BACK)


class Phase(StrEnum):
    """Where the current cohort is."""

    START = "start"  # before the cohort's first send (approval is asked here)
    SHADOW = "shadow"  # sending purpose=shadow manifests
    SHADOW_BAKE = "shadow_bake"  # candidate held in shadow; shadow gate decides
    INSTALL = "install"  # sending purpose=install manifests, batch by batch
    BAKE = "bake"  # installed; field gate decides
    ROLLBACK = "rollback"  # a gate failed or an operator asked: rolling back
    DONE = "done"  # final


class RolloutControl(StrEnum):
    """What an operator asked of a rollout (consumed by the leader's engine)."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"
    APPROVE = "approve"


_S = RolloutState
#: The states in which each operator request is accepted (API and CLI alike).
CONTROL_ALLOWED: dict[RolloutControl, frozenset[RolloutState]] = {
    RolloutControl.PAUSE: frozenset({_S.RUNNING, _S.AWAITING_APPROVAL}),
    RolloutControl.RESUME: frozenset({_S.PAUSED}),
    RolloutControl.ABORT: frozenset({_S.RUNNING, _S.PAUSED, _S.AWAITING_APPROVAL}),
    RolloutControl.ROLLBACK: frozenset(
        {_S.RUNNING, _S.PAUSED, _S.AWAITING_APPROVAL, _S.COMPLETED, _S.ABORTED}
    ),
    RolloutControl.APPROVE: frozenset({_S.RUNNING, _S.PAUSED, _S.AWAITING_APPROVAL}),
}


@dataclass(frozen=True)
class CohortRecord:
    """One cohort of a rollout."""

    index: int
    state: str
    size: int
    started_at: float | None
    installed_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class RolloutDevice:
    """One device's progress in a rollout."""

    device_id: str
    cohort: int
    state: str
    reason: str | None
    sends: int
    updated_at: float


@dataclass(frozen=True)
class Rollout:
    """A rollout with its cohorts and (when asked for) its devices."""

    rollout_id: str
    name: str | None
    version_ref: str
    policy_name: str | None
    policy: dict[str, Any]
    state: RolloutState
    phase: Phase
    cohort: int
    phase_started_at: float
    control: str | None
    approved_cohort: int
    created_at: float
    created_by: str
    updated_at: float
    finished_at: float | None
    reason: str | None
    rollback_scope: str | None
    source: str | None
    cohorts: list[CohortRecord] = field(default_factory=list)
    devices: list[RolloutDevice] = field(default_factory=list)

    def cohort_devices(self, index: int) -> list[RolloutDevice]:
        """The devices of cohort ``index``."""
        return [d for d in self.devices if d.cohort == index]

    def counts(self) -> dict[str, int]:
        """How many devices are in each progress state."""
        out: dict[str, int] = {}
        for d in self.devices:
            out[d.state] = out.get(d.state, 0) + 1
        return out

    def counts_since(
        self, since: float, states: Collection[str], devices: Collection[str]
    ) -> dict[str, int]:
        """Of ``devices``, how many reached each of ``states`` at or after ``since``."""
        out: dict[str, int] = {}
        for d in self.devices:
            if d.device_id in devices and d.state in states and d.updated_at >= since:
                out[d.state] = out.get(d.state, 0) + 1
        return out


@dataclass(frozen=True)
class RolloutEvent:
    """One entry of a rollout's timeline."""

    event_id: int
    rollout_id: str
    at: float
    kind: str
    cohort: int | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class ShadowRecord:
    """A shadow report as ingested from one telemetry message."""

    device_id: str
    msg_id: str
    received_at: float
    sent_at: float
    model_id: str
    version: int
    sha256: str
    serving_version: int
    task: str
    samples: int
    agreement: float | None
    mean_abs_diff: float | None
    candidate_p95_ms: float
    serving_p95_ms: float
    errors: int
    timeouts: int
    dropped: int
