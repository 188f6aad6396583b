"""The journal as single-host migrations wrote it: ``meta`` and one row per image.

Revision ID: j0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "j0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("image_id", sa.String(255), primary_key=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("target_location", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("size", sa.BigInteger()),
        sa.Column("checksum", sa.String(64)),
        sa.Column("hash_algo", sa.String(32)),
        sa.Column("multihash", sa.String(255)),
        sa.Column("source_deleted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error", sa.Text()),
        sa.Column("updated", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("images")
    op.drop_table("meta")
