"""item_vectors: embeddings computed once for all servers; item_tombstones for vector stores

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_vectors",
        sa.Column("item_id", sa.String(256), primary_key=True),
        sa.Column("text_hash", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_item_vectors_updated_at", "item_vectors", ["updated_at"])
    op.create_table(
        "item_tombstones",
        sa.Column("item_id", sa.String(256), primary_key=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_item_tombstones_deleted_at", "item_tombstones", ["deleted_at"])


def downgrade() -> None:
    op.drop_index("ix_item_tombstones_deleted_at", table_name="item_tombstones")
    op.drop_table("item_tombstones")
    op.drop_index("ix_item_vectors_updated_at", table_name="item_vectors")
    op.drop_table("item_vectors")
