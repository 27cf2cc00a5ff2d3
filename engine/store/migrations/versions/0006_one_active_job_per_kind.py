"""one active job per kind, enforced by a partial unique index on jobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('queued', 'running')"


def upgrade() -> None:
    # The old check-then-insert let two servers start the same kind at once: keep the oldest
    # active job of each kind and fail the others, or the unique index could not be built.
    op.get_bind().execute(
        sa.text(
            "UPDATE jobs SET state = 'failed', finished_at = :now, "
            "error = 'another ' || kind || ' job was active at the same time; "
            "stopped when one-job-per-kind moved into the database' "
            f"WHERE {ACTIVE} AND id > (SELECT MIN(j.id) FROM jobs j "
            f"WHERE j.kind = jobs.kind AND j.{ACTIVE})"
        ),
        {"now": datetime.now(UTC).replace(tzinfo=None)},
    )
    op.create_index(
        "uq_jobs_active_kind",
        "jobs",
        ["kind"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("uq_jobs_active_kind", table_name="jobs")
