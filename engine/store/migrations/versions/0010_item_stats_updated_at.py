"""item_stats.updated_at: when each row last changed, so a server follows popularity without
reading it per search (engine.catalog.item_watch)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows written before this have none: a watch reads the whole table when it starts.
    op.add_column("item_stats", sa.Column("updated_at", sa.DateTime()))
    op.create_index("ix_item_stats_updated_at", "item_stats", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_item_stats_updated_at", table_name="item_stats")
    with op.batch_alter_table("item_stats") as batch:
        batch.drop_column("updated_at")
