"""Staged rollouts: rollouts, their cohorts, per-device progress, the event timeline, named
policies; and the shadow reports of device telemetry that the rollout gates read.

Revision ID: 0006
Revises: 0005
Create Date: 2024-01-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = 64


def upgrade() -> None:
    """Create the rollout tables and ``shadow_reports``."""
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(length=_ID), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("version_ref", sa.String(length=200), nullable=False),
        sa.Column("policy_name", sa.String(length=200), nullable=True),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("phase", sa.String(length=30), nullable=False),
        sa.Column("cohort", sa.Integer(), nullable=False),
        sa.Column("phase_started_at", sa.Float(), nullable=False),
        sa.Column("control", sa.String(length=20), nullable=True),
        sa.Column("approved_cohort", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("rollback_scope", sa.String(length=20), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id"),
    )
    op.create_index("ix_rollouts_created", "rollouts", ["created_at", "rollout_id"])
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_cohorts",
        sa.Column("rollout_id", sa.String(length=_ID), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("installed_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id", "index"),
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(length=_ID), nullable=False),
        sa.Column("device_id", sa.String(length=_ID), nullable=False),
        sa.Column("cohort", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=30), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    op.create_index("ix_rollout_devices_cohort", "rollout_devices", ["rollout_id", "cohort"])
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=_ID), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("cohort", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollout_events_rollout", "rollout_events", ["rollout_id", "id"])
    op.create_table(
        "rollout_policies",
        sa.Column("name", sa.String(length=_ID), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "shadow_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=_ID), nullable=False),
        sa.Column("msg_id", sa.String(length=100), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
        sa.Column("model_id", sa.String(length=_ID), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("serving_version", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=20), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("mean_abs_diff", sa.Float(), nullable=True),
        sa.Column("candidate_p95_ms", sa.Float(), nullable=False),
        sa.Column("serving_p95_ms", sa.Float(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("timeouts", sa.Integer(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "msg_id", name="uq_shadow_reports_device_msg"),
    )
    op.create_index(
        "ix_shadow_reports_device_received", "shadow_reports", ["device_id", "received_at"]
    )


def downgrade() -> None:
    """Drop them (the rollouts' history goes with them)."""
    op.drop_index("ix_shadow_reports_device_received", table_name="shadow_reports")
    op.drop_table("shadow_reports")
    op.drop_table("rollout_policies")
    op.drop_index("ix_rollout_events_rollout", table_name="rollout_events")
    op.drop_table("rollout_events")
    op.drop_index("ix_rollout_devices_cohort", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_table("rollout_cohorts")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_index("ix_rollouts_created", table_name="rollouts")
    op.drop_table("rollouts")
