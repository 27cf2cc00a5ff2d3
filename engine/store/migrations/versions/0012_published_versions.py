"""published_versions, published_files, published_current: index and model versions copied
into the database, and the one that serves, for servers with data dirs of their own
(RECSEARCH_VERSION_SHARING=database)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "published_versions",
        sa.Column("store", sa.String(16), primary_key=True),
        sa.Column("version", sa.String(16), primary_key=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("byte_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "published_files",
        sa.Column("store", sa.String(16), primary_key=True),
        sa.Column("version", sa.String(16), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("chunk", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "published_current",
        sa.Column("store", sa.String(16), primary_key=True),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("published_current")
    op.drop_table("published_files")
    op.drop_table("published_versions")
