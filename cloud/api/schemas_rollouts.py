"""Staged-rollout models of the control API (``/v1/rollouts``, ``/v1/rollout-policies``).

These shapes are a contract (the dashboard and ``fedge cloud rollout --api`` read them):
fields are only ever added. ``RolloutOut.devices`` is present on ``GET /v1/rollouts/{id}``
only (a listing leaves it out: a rollout may hold thousands of devices).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.api.schemas_base import VersionRefField, _Out
from cloud.rollout.policy import RolloutPolicy, TargetSpec
from cloud.rollout.records import Phase, Rollout, RolloutEvent, RolloutState

__all__ = [
    "CohortOut",
    "CoordinatorOut",
    "PolicyOut",
    "PolicyPage",
    "RolloutDeviceOut",
    "RolloutEventOut",
    "RolloutEventPage",
    "RolloutIn",
    "RolloutOut",
    "RolloutPage",
]

Name = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")


class RolloutIn(BaseModel):
    """Start a staged rollout: a version, and a policy inline or by name.

    ``target`` (if given) replaces the policy's target, so one named policy serves many
    fleets. With neither ``policy`` nor ``policy_name``, the default policy applies to
    ``target``.
    """

    model_config = ConfigDict(extra="forbid")

    version: VersionRefField
    policy: RolloutPolicy | None = None
    policy_name: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )
    target: TargetSpec | None = None
    name: str | None = Name


class CohortOut(_Out):
    """One cohort: ``pending``, ``running``, ``passed``, ``failed`` or ``skipped`` (empty)."""

    index: int
    state: str
    size: int
    started_at: float | None
    installed_at: float | None
    finished_at: float | None


class RolloutDeviceOut(_Out):
    """One device's progress (``sends``: manifests sent to it by this rollout)."""

    device_id: str
    cohort: int
    state: str = Field(
        description="pending, sent, shadowing, committed, failed, timeout, skipped, "
        "rolled_back, rollback_failed, dropped (the shadow candidate dropped on an abort) "
        "or drop_failed."
    )
    reason: str | None
    sends: int
    updated_at: float


class RolloutOut(BaseModel):
    """A rollout: where its state machine is, its cohorts and the device counts."""

    rollout_id: str
    name: str | None
    version: str
    policy_name: str | None
    policy: dict[str, Any]
    state: RolloutState
    phase: Phase
    cohort: int = Field(description="Index of the current cohort (0 = canary).")
    control: str | None = Field(description="An operator request the leader has not applied.")
    approved_cohort: int
    created_at: float
    created_by: str
    updated_at: float
    finished_at: float | None
    reason: str | None
    source: str | None
    cohorts: list[CohortOut]
    counts: dict[str, int] = Field(description="Devices per progress state.")
    devices: list[RolloutDeviceOut] | None = None

    @classmethod
    def of(
        cls, rollout: Rollout, *, devices: bool = False, counts: dict[str, int] | None = None
    ) -> RolloutOut:
        """From a store record (``counts`` from the devices unless given)."""
        return cls(
            rollout_id=rollout.rollout_id,
            name=rollout.name,
            version=rollout.version_ref,
            policy_name=rollout.policy_name,
            policy=rollout.policy,
            state=rollout.state,
            phase=rollout.phase,
            cohort=rollout.cohort,
            control=rollout.control,
            approved_cohort=rollout.approved_cohort,
            created_at=rollout.created_at,
            created_by=rollout.created_by,
            updated_at=rollout.updated_at,
            finished_at=rollout.finished_at,
            reason=rollout.reason,
            source=rollout.source,
            cohorts=[CohortOut.model_validate(c) for c in rollout.cohorts],
            counts=counts if counts is not None else rollout.counts(),
            devices=[RolloutDeviceOut.model_validate(d) for d in rollout.devices]
            if devices
            else None,
        )


class RolloutPage(BaseModel):
    """Rollouts, newest first."""

    items: list[RolloutOut]
    next_cursor: str | None


class RolloutEventOut(BaseModel):
    """One timeline entry; a ``gate`` event's detail holds ``gate``, ``verdict``,
    ``reason``, ``values``, ``thresholds`` and ``samples``."""

    event_id: int
    at: float
    kind: str
    cohort: int | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, event: RolloutEvent) -> RolloutEventOut:
        """From a store record."""
        return cls(
            event_id=event.event_id,
            at=event.at,
            kind=event.kind,
            cohort=event.cohort,
            detail=event.detail,
        )


class RolloutEventPage(BaseModel):
    """Timeline entries, oldest first; pass ``next_after`` as ``after`` for more."""

    items: list[RolloutEventOut]
    next_after: int | None


class PolicyOut(BaseModel):
    """A named rollout policy."""

    name: str
    policy: RolloutPolicy


class PolicyPage(BaseModel):
    """Every named policy, by name."""

    items: list[PolicyOut]


class CoordinatorOut(BaseModel):
    """Whether the answering process leads (runs rollouts and federation runs)."""

    leader: bool
    running: bool = Field(description="Whether this process runs a rollout coordinator at all.")
