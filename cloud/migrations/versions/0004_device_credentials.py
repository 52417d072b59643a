"""Enrollment records in the database: each device's public credentials.

The records the key home kept in ``fleet.json`` (public keys, broker password hash, TLS
certificate serial, SuperNode public key) become columns of ``devices``; groups,
``hardware_id``, ``enrolled_at`` and the revoked flag (``revoked_at``) were already there.
No private key is ever stored. Rows from before stay without credentials (NULL) until the
key home's ``fleet.json`` is imported (``cloud.keys.KeyHome.import_json_fleet``).

Revision ID: 0004
Revises: 0003
Create Date: 2024-01-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("box_public", 64),
    ("signing_public", 64),
    ("password_hash", 400),
    ("tls_serial", 64),
    ("supernode_public", 1000),
)


def upgrade() -> None:
    """Add the credential columns (nullable: existing rows have none yet)."""
    for name, length in _COLUMNS:
        op.add_column("devices", sa.Column(name, sa.String(length=length), nullable=True))


def downgrade() -> None:
    """Drop them (export the fleet first: ``fedge keys export-fleet``)."""
    with op.batch_alter_table("devices") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
