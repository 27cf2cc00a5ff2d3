"""events, user_features, item_stats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(256), nullable=True, unique=True),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_events_user_ts", "events", ["user_id", "ts"])
    op.create_index("ix_events_item_id", "events", ["item_id"])
    op.create_table(
        "user_features",
        sa.Column("user_id", sa.String(256), primary_key=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("first_ts", sa.DateTime(), nullable=True),
        sa.Column("last_ts", sa.DateTime(), nullable=True),
        sa.Column("ref_ts", sa.DateTime(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("vector_weight", sa.Float(), nullable=False),
        sa.Column("category_affinity", sa.JSON(), nullable=False),
        sa.Column("tag_affinity", sa.JSON(), nullable=False),
        sa.Column("recent", sa.JSON(), nullable=False),
        sa.Column("purchased", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "item_stats",
        sa.Column("item_id", sa.String(256), primary_key=True),
        sa.Column("popularity", sa.Float(), nullable=False),
        sa.Column("ref_ts", sa.DateTime(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("item_stats")
    op.drop_table("user_features")
    op.drop_index("ix_events_item_id", table_name="events")
    op.drop_index("ix_events_user_ts", table_name="events")
    op.drop_table("events")
