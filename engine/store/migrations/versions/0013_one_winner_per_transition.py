"""one running experiment and one rule per target and scope, enforced by unique indexes

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

RUNNING = "state = 'running'"


def upgrade() -> None:
    bind = op.get_bind()
    # The old check-then-insert let two starts both run: keep the oldest running experiment
    # and stop the others, or the unique index could not be built.
    bind.execute(
        sa.text(
            f"UPDATE experiments SET state = 'stopped', stopped_at = :now WHERE {RUNNING} "
            f"AND id > (SELECT MIN(e.id) FROM experiments e WHERE e.{RUNNING})"
        ),
        {"now": datetime.now(UTC).replace(tzinfo=None)},
    )
    op.create_index(
        "uq_experiments_running",
        "experiments",
        ["state"],
        unique=True,
        sqlite_where=sa.text(RUNNING),
        postgresql_where=sa.text(RUNNING),
    )
    op.add_column("rules", sa.Column("fingerprint", sa.String(64)))
    rules = sa.table(
        "rules",
        sa.column("id", sa.Integer()),
        sa.column("action", sa.String()),
        sa.column("item_id", sa.String()),
        sa.column("where", sa.JSON()),
        sa.column("query", sa.String()),
        sa.column("starts_at", sa.DateTime()),
        sa.column("ends_at", sa.DateTime()),
        sa.column("fingerprint", sa.String()),
    )
    # Rules written twice before this revision: the oldest gets the fingerprint, the later
    # copies keep none (NULLs never collide), so nothing stored is lost.
    seen: set[str] = set()
    for row in bind.execute(sa.select(rules).order_by(rules.c.id)).mappings().all():
        key = _fingerprint(row)
        if key not in seen:
            seen.add(key)
            bind.execute(sa.update(rules).where(rules.c.id == row["id"]).values(fingerprint=key))
    op.create_index("uq_rules_fingerprint", "rules", ["fingerprint"], unique=True)


def _fingerprint(row: Any) -> str:
    """engine.ranking.rule_store.fingerprint as of this revision (kept here: a migration does
    not change when the engine does)."""
    scope = [
        row["action"],
        row["item_id"],
        row["where"],
        row["query"],
        row["starts_at"].isoformat() if row["starts_at"] else None,
        row["ends_at"].isoformat() if row["ends_at"] else None,
    ]
    text = json.dumps(scope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def downgrade() -> None:
    op.drop_index("uq_rules_fingerprint", table_name="rules")
    with op.batch_alter_table("rules") as batch:
        batch.drop_column("fingerprint")
    op.drop_index("uq_experiments_running", table_name="experiments")
