"""user_features.vector_encoder: the encoder whose item vectors a user's taste vector sums, so
it can be recomputed in the serving encoder's space after a switch (engine.users.taste)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("user_features") as batch:
        batch.add_column(sa.Column("vector_encoder", sa.String(256)))


def downgrade() -> None:
    with op.batch_alter_table("user_features") as batch:
        batch.drop_column("vector_encoder")
