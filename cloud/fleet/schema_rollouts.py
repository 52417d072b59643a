"""SQLAlchemy tables of staged rollouts and shadow evidence (migration 0006).

On the registry's declarative ``Base`` like :mod:`cloud.fleet.schema` (which imports this
module, so one metadata holds every table). A rollout's whole state is here — the policy,
the cohort assignment, each device's progress and the decision timeline — so a coordinator
killed at any point resumes from the database (:mod:`cloud.rollout.engine`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloud.registry.schema import Base

__all__ = [
    "RolloutCohortRow",
    "RolloutDeviceRow",
    "RolloutEventRow",
    "RolloutPolicyRow",
    "RolloutRow",
    "ShadowReportRow",
]

ID = 64
NullableJSON = JSON(none_as_null=True)


class RolloutRow(Base):
    """One staged rollout: its policy, where the state machine is, and the pending control.

    ``control`` is written only by the API (pause, resume, abort, rollback, approve) and
    consumed only by the leader's engine, so neither overwrites the other's field.
    """

    __tablename__ = "rollouts"
    __table_args__ = (
        Index("ix_rollouts_created", "created_at", "rollout_id"),
        Index("ix_rollouts_state", "state"),
    )

    rollout_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    version_ref: Mapped[str] = mapped_column(String(200))
    policy_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(30))
    phase: Mapped[str] = mapped_column(String(30))
    cohort: Mapped[int] = mapped_column(Integer)
    phase_started_at: Mapped[float] = mapped_column(Float)
    control: Mapped[str | None] = mapped_column(String(20), nullable=True)
    approved_cohort: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    #: While rolling back: ``cohort`` (a failed gate) or ``all`` (an operator's rollback).
    rollback_scope: Mapped[str | None] = mapped_column(String(20), nullable=True)
    source: Mapped[str | None] = mapped_column(String(200), nullable=True)


class RolloutCohortRow(Base):
    """One cohort of a rollout: its size and when its phases started and ended."""

    __tablename__ = "rollout_cohorts"

    rollout_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(30))
    size: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    installed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutDeviceRow(Base):
    """One device's progress in a rollout (``sends`` counts manifests sent to it)."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_cohort", "rollout_id", "cohort"),)

    rollout_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    cohort: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(30))
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sends: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float)


class RolloutEventRow(Base):
    """The rollout's timeline: every transition and gate decision with its evidence."""

    __tablename__ = "rollout_events"
    __table_args__ = (Index("ix_rollout_events_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(String(ID))
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(40))
    cohort: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)


class RolloutPolicyRow(Base):
    """A named rollout policy (a federation run may end in a rollout under one)."""

    __tablename__ = "rollout_policies"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ShadowReportRow(Base):
    """One telemetry window's shadow evaluation of a candidate (``TelemetryMessage.shadow``)."""

    __tablename__ = "shadow_reports"
    __table_args__ = (
        UniqueConstraint("device_id", "msg_id", name="uq_shadow_reports_device_msg"),
        Index("ix_shadow_reports_device_received", "device_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(ID))
    msg_id: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float] = mapped_column(Float)
    model_id: Mapped[str] = mapped_column(String(ID))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    serving_version: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(20))
    samples: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean_abs_diff: Mapped[float | None] = mapped_column(Float, nullable=True)
    candidate_p95_ms: Mapped[float] = mapped_column(Float)
    serving_p95_ms: Mapped[float] = mapped_column(Float)
    errors: Mapped[int] = mapped_column(Integer)
    timeouts: Mapped[int] = mapped_column(Integer)
    dropped: Mapped[int] = mapped_column(Integer)
