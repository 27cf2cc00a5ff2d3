"""item_vectors.chunks and chunk_spec: the windows of a long item after its first, embedded
by the follower with its first, so a server's delta and the next build need not encode them
(engine.encoder.chunking)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("item_vectors") as batch:
        batch.add_column(sa.Column("chunks", sa.LargeBinary()))
        batch.add_column(sa.Column("chunk_spec", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("item_vectors") as batch:
        batch.drop_column("chunk_spec")
        batch.drop_column("chunks")
