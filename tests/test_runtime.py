"""The Runtime: a private data dir and database, and searches and writes that survive a database
that dropped every connection."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexStore
from engine.index.versions import CURRENT, VersionStore
from engine.ranking.model_store import ModelStore
from engine.runtime import Runtime
from engine.store.models import Job


def _stage(store: VersionStore, payload: int) -> Path:
    staging = store.stage()
    (staging / store.manifest_name).write_text(json.dumps({"version": None, "n": payload}))
    return staging


@pytest.fixture
def umask_022() -> Any:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_and_database_are_private(
    tmp_path: Path, embedder: Embedder, umask_022: None
) -> None:
    tmp_path.chmod(0o755)
    settings = Settings(data_dir=tmp_path / "new" / "var")
    rt = Runtime(settings, embedder=embedder)
    try:
        with rt.session() as session:
            session.execute(select(func.count()).select_from(Job))
        database = settings.data_dir / "recsearch.db"
        assert _mode(tmp_path / "new") == 0o700  # a parent we created
        assert _mode(settings.data_dir) == 0o700
        assert _mode(database) == 0o600
        for extra in ("-wal", "-shm"):
            side = database.with_name(database.name + extra)
            if side.exists():
                assert _mode(side) == 0o600
        for store in (IndexStore(settings.index_dir), ModelStore(settings.model_dir)):
            store.publish(_stage(store, 1))
            assert _mode(store.root) == 0o700
            assert _mode(store.root / "v000001") == 0o700
            assert _mode(store.root / CURRENT) == 0o600
    finally:
        rt.close()
    assert _mode(tmp_path) == 0o755  # an existing parent keeps its mode


def test_an_existing_open_data_dir_is_left_alone_with_a_warning(
    tmp_path: Path, embedder: Embedder, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o750)  # e.g. opened on purpose to a group that runs the server
    with caplog.at_level(logging.WARNING, logger="engine"):
        rt = Runtime(Settings(data_dir=data_dir), embedder=embedder)
        rt.close()
    assert _mode(data_dir) == 0o750
    assert _mode(data_dir / "recsearch.db") == 0o600
    assert any("chmod 700" in r.getMessage() for r in caplog.records)


def test_a_version_folder_is_as_open_as_its_store(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "indexes"
    root.mkdir()
    root.chmod(0o750)
    store = IndexStore(root)
    version = store.publish(_stage(store, 1))
    assert _mode(root / version) == 0o750 and _mode(root / CURRENT) == 0o640


def test_searches_and_writes_survive_a_database_that_dropped_every_connection(
    built: Runtime, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL restart or failover drops every pooled connection. Writes meet none (their
    pool pings at checkout); searches, whose pool does not ping, run once more."""
    if built.db.dialect.name != "postgresql":
        pytest.skip("SQLite has no server connections to drop")
    event = {"user_id": "traveller", "item_id": "tokyo-japan", "type": "view"}

    def serve() -> list[str]:
        assert client.post("/v1/events", json=event).status_code == 200
        found = client.get("/v1/search", query_string={"q": "museums", "user_id": "traveller"})
        assert found.status_code == 200, found.get_json()
        similar = client.get("/v1/items/paris-france/similar")
        assert similar.status_code == 200, similar.get_json()
        return [hit["id"] for hit in found.get_json()["results"]]

    assert serve()
    with built.db.connect() as conn:
        dropped = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    assert dropped, "no connection was dropped"
    with caplog.at_level(logging.WARNING, logger="engine.runtime"):
        assert serve()
    assert "a search met a dropped database connection" in caplog.text
