"""The serving index's status, one for the CLI and the admin API."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.catalog.items import ItemIn, upsert_items
from engine.index.artifact import IndexStore
from engine.runtime import Runtime


def test_index_status_before_and_after_a_build(runtime: Runtime, seed_index: Path) -> None:
    from engine.index.status import index_status

    store = IndexStore(runtime.settings.index_dir)
    with runtime.session() as session:
        assert index_status(store, session) is None
    shutil.copytree(seed_index, runtime.settings.index_dir)
    with runtime.write_session() as session:
        upsert_items(session, [ItemIn(id="new-item", title="A brand new place")])
    with runtime.session() as session:
        status = index_status(store, session)
    assert status is not None
    manifest = store.manifest("v000001")
    assert status.model_dump() == {
        "version": "v000001",
        "items": 325,
        "factory": "Flat",
        "params": manifest["index"]["params"],
        "size_bytes": sum(
            p.stat().st_size for p in (store.root / "v000001").rglob("*") if p.is_file()
        ),
        "built_at": manifest["built_at"],
        "recall_at_10": manifest["recall_at_10"],
        "delta_items": 1,
        "vector_store": {"backend": "faiss"},
        "model": manifest["model"]["name"],
        "dim": 384,
        "metric": "inner_product",
        "is_exact": True,
        "index_type": None,
    }
    assert status.size_bytes > 0


def test_the_cli_status_shows_the_shared_index_status(runtime: Runtime, seed_index: Path) -> None:
    from click.testing import CliRunner

    from web.cli import Context, cli

    shutil.copytree(seed_index, runtime.settings.index_dir)
    result = CliRunner().invoke(
        cli, ["status"], obj=Context(runtime.settings, True, runtime), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "v000001: 325 items, Flat" in result.output
    assert "; 0 items pending in the delta" in result.output
    assert "versions   v000001" in result.output
