"""The database alone, for stores that share versions through it (two hosts' folders)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from engine.core.config import Settings
from engine.store.db import ensure_schema, make_engine


@pytest.fixture
def database(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(data_dir=tmp_path / "db", database_url=db_url))
    ensure_schema(engine)
    yield engine
    engine.dispose()
