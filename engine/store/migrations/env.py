"""Alembic environment: runs on the connection engine.store.db hands it, or on RECSEARCH_*
settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from engine.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Plain `alembic upgrade head` from a shell: use the same configuration as the CLI.
    from engine.core.config import Settings
    from engine.store.db import make_engine

    engine = make_engine(Settings.from_env())
    with engine.begin() as conn:
        _run(conn)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
