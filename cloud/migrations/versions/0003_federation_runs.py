"""Federated runs started from the control API, and their rounds.

Revision ID: 0003
Revises: 0002
Create Date: 2024-01-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``federation_runs`` and ``federation_rounds``."""
    op.create_table(
        "federation_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("best_version", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_federation_runs_created", "federation_runs", ["created_at", "run_id"])
    op.create_table(
        "federation_rounds",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("participants", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.Column("bytes_down", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("version", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["federation_runs.run_id"]),
        sa.PrimaryKeyConstraint("run_id", "round"),
    )


def downgrade() -> None:
    """Drop the federation tables."""
    op.drop_table("federation_rounds")
    op.drop_index("ix_federation_runs_created", table_name="federation_runs")
    op.drop_table("federation_runs")
