"""items and index_versions

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("category", sa.String(200), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_items_category", "items", ["category"])
    op.create_table(
        "index_versions",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("index_type", sa.String(200), nullable=False),
        sa.Column("recall_at_10", sa.Float(), nullable=True),
        sa.Column("build_seconds", sa.Float(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("index_versions")
    op.drop_index("ix_items_category", table_name="items")
    op.drop_table("items")
