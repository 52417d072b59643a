"""Deployment runners: which serve process runs a deployment, and when it last said so.

Two ``fedge cloud serve`` processes may share one database, and either may run a
deployment job. ``deployments`` gains ``runner`` (the instance id of the process running
the job, ``host:pid:random``) and ``heartbeat_at`` (Unix seconds, refreshed while the job
is queued or running), so that crash recovery fails only the open deployments whose runner
stopped beating (``cloud.fleet.sync.fail_interrupted_deployments``), not those another live
process is running. Both are nullable: a row from before has neither, and an open one
counts as orphaned.

Revision ID: 0007
Revises: 0006
Create Date: 2024-01-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``deployments.runner`` and ``deployments.heartbeat_at``."""
    op.add_column("deployments", sa.Column("runner", sa.String(length=200), nullable=True))
    op.add_column("deployments", sa.Column("heartbeat_at", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop them (batch mode: SQLite rebuilds the table; the deployments stay)."""
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("runner")
