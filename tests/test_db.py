"""Migrations create the schema on an empty SQLite or PostgreSQL database, once, concurrently."""

from __future__ import annotations

import threading

from sqlalchemy import inspect

from engine.config import Settings
from engine.db import current_revision, ensure_schema, head_revision, make_engine, upgrade


def test_upgrade_creates_schema_and_is_idempotent(settings: Settings) -> None:
    engine = make_engine(settings)
    assert current_revision(engine) is None
    before, after = upgrade(engine)
    assert (before, after) == (None, head_revision())
    tables = set(inspect(engine).get_table_names())
    assert {"items", "index_versions", "alembic_version"} <= tables
    columns = {c["name"] for c in inspect(engine).get_columns("items")}
    assert {"id", "title", "text", "category", "tags", "attributes", "created_at"} <= columns
    assert upgrade(engine) == (head_revision(), head_revision())
    engine.dispose()


def test_concurrent_first_use_migrates_once(settings: Settings) -> None:
    errors: list[BaseException] = []

    def first_use() -> None:
        engine = make_engine(settings)
        try:
            ensure_schema(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine = make_engine(settings)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    assert errors == []
