"""impressions.query: the search's text, so a click on a result is a (query, item) positive
for tuning the encoder (indexer.encoder_tuning)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("impressions") as batch:
        batch.add_column(sa.Column("query", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("impressions") as batch:
        batch.drop_column("query")
