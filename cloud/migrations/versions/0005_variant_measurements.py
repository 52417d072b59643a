"""Variant measurements: what each device timed for each variant it tried (protocol §15).

One row per (device, artifact): a device's newest timing of one variant replaces its
older one. The coordinator's chooser (``cloud.deployment.variants``) reads them per
hardware class (the profile's ``hardware_id``) and model, so the class's rows are indexed by
``(hardware_id, model_id, version)``. ``size_bytes`` is the variant's model-file size, kept
to break ties between equally fast variants (the smaller file wins). ``deployment_devices``
gains ``variant``: the variant chosen for the device and why (``Choice.to_dict``), for the
deployment report.

Revision ID: 0005
Revises: 0004
Create Date: 2024-01-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``variant_measurements``; add ``deployment_devices.variant``."""
    op.create_table(
        "variant_measurements",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("hardware_id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_id", sa.String(length=32), nullable=False),
        sa.Column("precision", sa.String(length=20), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("median_us", sa.Float(), nullable=False),
        sa.Column("p99_us", sa.Float(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("cpu_features", sa.JSON(), nullable=False),
        sa.Column("measured_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "device_id", "artifact_id", name="uq_variant_measurements_device_artifact"
        ),
    )
    op.create_index(
        "ix_variant_measurements_class",
        "variant_measurements",
        ["hardware_id", "model_id", "version"],
    )
    op.add_column(
        "deployment_devices", sa.Column("variant", sa.JSON(none_as_null=True), nullable=True)
    )


def downgrade() -> None:
    """Drop ``variant_measurements`` (the chooser falls back to the static preference)."""
    with op.batch_alter_table("deployment_devices") as batch:
        batch.drop_column("variant")
    op.drop_index("ix_variant_measurements_class", table_name="variant_measurements")
    op.drop_table("variant_measurements")
