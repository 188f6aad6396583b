"""Leases, so that workers on many hosts never work on one image at once; the worker
that finished each image, when, and its outcome as the report shows it (JSON).

Revision ID: j0002
Revises: j0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "j0002"
down_revision = "j0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("lease_owner", sa.String(255)))
    op.add_column("images", sa.Column("lease_expires", sa.Double()))
    op.add_column("images", sa.Column("worker", sa.String(255)))
    op.add_column("images", sa.Column("finished", sa.Double()))
    op.add_column("images", sa.Column("outcome", sa.Text()))
    op.create_index("ix_images_state", "images", ["state"])


def downgrade() -> None:
    op.drop_index("ix_images_state", "images")
    for column in ("outcome", "finished", "worker", "lease_expires", "lease_owner"):
        op.drop_column("images", column)
