"""impressions: what each search showed, with its features

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=True),
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("index_version", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_impressions_request", "impressions", ["request_id", "position"])
    op.create_index("ix_impressions_ts", "impressions", ["ts"])
    op.create_index("ix_events_request_id", "events", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_events_request_id", table_name="events")
    op.drop_index("ix_impressions_ts", table_name="impressions")
    op.drop_index("ix_impressions_request", table_name="impressions")
    op.drop_table("impressions")
