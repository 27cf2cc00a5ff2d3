"""covisits: item-to-item co-visitation counts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "covisits",
        sa.Column("item_a", sa.String(256), primary_key=True),
        sa.Column("item_b", sa.String(256), primary_key=True),
        sa.Column("weight", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("covisits")
