"""experiments: online experiments (team-draft interleaving); impressions say their side

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("candidate", sa.String(64), nullable=False),
        sa.Column("live", sa.String(64), nullable=False),
        sa.Column("traffic", sa.Float(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime()),
    )
    op.add_column("impressions", sa.Column("experiment_id", sa.Integer()))
    op.add_column("impressions", sa.Column("team", sa.String(9)))
    op.create_index("ix_impressions_experiment_id", "impressions", ["experiment_id"])


def downgrade() -> None:
    op.drop_index("ix_impressions_experiment_id", table_name="impressions")
    with op.batch_alter_table("impressions") as batch:
        batch.drop_column("team")
        batch.drop_column("experiment_id")
    op.drop_table("experiments")
