"""The migrations and the models agree: Alembic's autogenerate finds nothing to change between
a database brought to head the way the engine does it and engine/store/models.py, on SQLite
and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from pprint import pformat
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, String

from engine.core.config import Settings
from engine.store.db import current_revision, head_revision, make_engine, upgrade
from engine.store.models import Base


def _migrated(db_url: str, tmp_path: Path) -> Engine:
    engine = make_engine(Settings(data_dir=tmp_path / "var", database_url=db_url))
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    return engine


def _diff(engine: Engine, metadata: MetaData) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrated_schema_matches_models(db_url: str, tmp_path: Path) -> None:
    engine = _migrated(db_url, tmp_path)
    try:
        diff = _diff(engine, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], (
        f"the migrated {engine.dialect.name} schema differs from engine/store/models.py "
        f"(add a migration, or fix the model):\n{pformat(diff, width=100)}"
    )


def test_diff_sees_a_column_the_migrations_lack(db_url: str, tmp_path: Path) -> None:
    copy = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(copy)
    copy.tables["items"].append_column(Column("not_migrated", String(10), nullable=True))
    engine = _migrated(db_url, tmp_path)
    try:
        diff = _diff(engine, copy)
    finally:
        engine.dispose()
    added = [d for d in diff if d[0] == "add_column"]
    assert [(d[2], d[3].name) for d in added] == [("items", "not_migrated")], pformat(diff)
