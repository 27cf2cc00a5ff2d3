"""rules: merchandising rules (pin, boost, bury, hide)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("item_id", sa.String(256)),
        sa.Column("where", sa.JSON()),
        sa.Column("query", sa.String(1000)),
        sa.Column("position", sa.Integer()),
        sa.Column("weight", sa.Float()),
        sa.Column("starts_at", sa.DateTime()),
        sa.Column("ends_at", sa.DateTime()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rules")
