"""`build`: manifest, atomic publish, measured recall, reuse, quality gate, crash safety."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.catalog.items import delete_items
from engine.core.clock import utcnow
from engine.core.errors import Conflict, InvalidInput, NotReady
from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.models import IndexVersion, ItemTombstone
from indexer.build import build
from indexer.ingest import ingest
from tests.conftest import SAMPLE_CATALOG, write_jsonl


def small_catalog(tmp_path: Path, n: int = 30) -> Path:
    lines = SAMPLE_CATALOG.read_text(encoding="utf-8").splitlines()[:n]
    return write_jsonl(tmp_path / f"small{n}.jsonl", lines)  # type: ignore[arg-type]


def load(runtime: Runtime, path: Path) -> None:
    with runtime.write_session() as session:
        report = ingest(runtime, session, path)
    assert report.accepted


def run_build(runtime: Runtime, **kw):  # type: ignore[no-untyped-def]
    with runtime.session() as session:
        return build(runtime, session, **kw)


def search_ids(runtime: Runtime, q: str, k: int = 5) -> tuple[str, list[str]]:
    with runtime.session() as session:
        response = runtime.searcher.search(session, SearchRequest(q=q, k=k))
    return response.index_version, [h.id for h in response.results]


def test_build_publishes_a_self_describing_version(runtime: Runtime, tmp_path: Path) -> None:
    load(runtime, small_catalog(tmp_path))
    phases: list[str] = []
    report = run_build(runtime, progress=lambda phase, done, total: phases.append(phase))
    store = IndexStore(runtime.settings.index_dir)
    assert store.current_version() == report.version == "v000001"
    manifest = json.loads((runtime.settings.index_dir / "v000001" / "manifest.json").read_text())
    assert manifest["version"] == "v000001"
    assert manifest["model"] == {
        "name": "all-MiniLM-L6-v2",
        "dimension": 384,
        "normalized": True,
        "encoder": runtime.embedder.batch_encoder,
        "encoder_version": None,  # RECSEARCH_MODEL's, not a tuned version
        "query_prompt": "",
        "document_prompt": "",
    }
    assert manifest["metric"] == "inner_product"
    assert manifest["index"]["backend"] == "faiss" and manifest["index"]["factory"] == "Flat"
    assert manifest["item_count"] == 30 and manifest["recall_at_10"] == 1.0
    assert manifest["recall_sample"] == 30 and manifest["build_seconds"] > 0
    assert manifest["built_at"].endswith("+00:00")
    assert manifest["lexical"]["backend"] == "bm25s"
    assert {"index.faiss", "items.json", "vectors.npy", "manifest.json", "lexical"} <= {
        p.name for p in (runtime.settings.index_dir / "v000001").iterdir()
    }
    assert ["load", "embed", "chunk", "index", "recall", "lexical", "publish"] == list(
        dict.fromkeys(phases)
    )
    with runtime.session() as session:
        row = session.scalars(select(IndexVersion)).one()
    assert (row.version, row.item_count, row.index_type) == ("v000001", 30, "Flat")


def test_hnsw_records_parameters_and_high_recall(runtime: Runtime, tmp_path: Path) -> None:
    load(runtime, small_catalog(tmp_path, 200))
    settings = runtime.settings.replace(index_type="hnsw", hnsw_ef_search=64)
    report = run_build(runtime, settings=settings)
    manifest = IndexStore(settings.index_dir).manifest(report.version)
    assert manifest["index"]["factory"] == "HNSW32,SQfp16"
    assert manifest["index"]["params"] == {"efConstruction": 200, "efSearch": 64}
    assert manifest["recall_at_10"] >= 0.98


def test_rebuild_reuses_vectors_and_if_stale_skips(runtime: Runtime, tmp_path: Path) -> None:
    path = small_catalog(tmp_path)
    load(runtime, path)
    first = run_build(runtime)
    assert (first.embedded, first.reused) == (30, 0)
    skipped = run_build(runtime, if_stale=True)
    assert skipped.skipped and skipped.version == first.version
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["text"] = "A completely different description about volcanoes."
    load(runtime, write_jsonl(tmp_path / "changed.jsonl", rows))
    second = run_build(runtime, if_stale=True)
    assert not second.skipped and second.version == "v000002"
    assert (second.embedded, second.reused) == (1, 29)
    # Reused vectors are the same vectors: a search gives the same scores as before.
    new = IndexStore(runtime.settings.index_dir).load("v000002")
    old = IndexStore(runtime.settings.index_dir).load("v000001")
    assert new.ids == old.ids
    changed = new.ids.index(rows[0]["id"])
    same = [r for r in range(30) if r != changed]
    assert (new.vectors()[same] == old.vectors()[same]).all()
    assert not (new.vectors()[changed] == old.vectors()[changed]).all()


def test_empty_catalog_is_a_clear_error(runtime: Runtime) -> None:
    with pytest.raises(InvalidInput, match="catalog is empty"):
        run_build(runtime)
    with runtime.session() as session, pytest.raises(NotReady, match="recsearch build"):
        runtime.searcher.search(session, SearchRequest(q="beach"))


def test_recall_floor_refuses_to_publish(runtime: Runtime, tmp_path: Path) -> None:
    load(runtime, small_catalog(tmp_path, 200))
    first = run_build(runtime)
    bad = runtime.settings.replace(index_type="HNSW4", hnsw_ef_search=1, min_recall=0.999)
    with pytest.raises(Conflict, match="below RECSEARCH_MIN_RECALL"):
        run_build(runtime, settings=bad)
    store = IndexStore(runtime.settings.index_dir)
    assert store.current_version() == first.version and store.versions() == [first.version]


@pytest.mark.parametrize("crash_phase", ["embed", "index", "publish"])
def test_crash_mid_build_keeps_the_previous_version(
    runtime: Runtime, tmp_path: Path, crash_phase: str
) -> None:
    load(runtime, small_catalog(tmp_path))
    first = run_build(runtime)
    _, before = search_ids(runtime, "beach")
    rows = [json.loads(line) for line in small_catalog(tmp_path).read_text().splitlines()]
    load(
        runtime,
        write_jsonl(tmp_path / "more.jsonl", [dict(r, title=r["title"] + "!") for r in rows]),
    )

    def crash(phase: str, done: int, total: int) -> None:
        if phase == crash_phase and done < total:
            raise KeyboardInterrupt(f"killed during {phase}")

    with pytest.raises(KeyboardInterrupt):
        run_build(runtime, progress=crash)
    store = IndexStore(runtime.settings.index_dir)
    assert store.current_version() == first.version and store.versions() == [first.version]
    version, after = search_ids(runtime, "beach")
    assert version == first.version and after == before
    # The next build succeeds and leaves no half-written version behind.
    second = run_build(runtime)
    assert store.current_version() == second.version == "v000002"


def test_old_versions_are_pruned(runtime: Runtime, tmp_path: Path) -> None:
    load(runtime, small_catalog(tmp_path, 10))
    settings = runtime.settings.replace(keep_versions=2)
    reports = [run_build(runtime, settings=settings) for _ in range(3)]
    store = IndexStore(settings.index_dir)
    assert store.versions() == ["v000002", "v000003"] and reports[2].pruned == ["v000001"]
    store.point_current_at("v000002")  # rollback keeps working on kept versions
    assert search_ids(runtime, "museum")[0] == "v000002"


def test_deletions_older_than_every_kept_version_are_forgotten(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tombstone lives while a kept version (a rollback target) still holds its item."""
    monkeypatch.setattr("indexer.build.TOMBSTONE_GRACE", timedelta(0))
    load(runtime, small_catalog(tmp_path, 10))
    settings = runtime.settings.replace(keep_versions=2)
    run_build(runtime, settings=settings)  # v000001 holds every item
    _, found = search_ids(runtime, "Eiffel Tower and the Louvre")
    victim = found[0]
    with runtime.write_session() as session:
        assert delete_items(session, [victim]) == []

    def tombstones() -> list[str]:
        with runtime.session() as session:
            return list(session.scalars(select(ItemTombstone.item_id)))

    # A build reads the catalog as of a second before its clock (settled_before): let its
    # clock run two seconds ahead rather than wait.
    runtime.clock = lambda: utcnow() + timedelta(seconds=2)
    run_build(runtime, settings=settings)  # v000002 lacks it; v000001 is kept
    assert tombstones() == [victim]
    store = IndexStore(settings.index_dir)
    store.point_current_at("v000001")  # the rollback target still hides the deleted item
    version, found = search_ids(runtime, "Eiffel Tower and the Louvre")
    assert version == "v000001" and found and victim not in found
    store.point_current_at("v000002")
    run_build(runtime, settings=settings)  # v000001 goes: no kept version holds the item
    assert store.versions() == ["v000002", "v000003"]
    assert tombstones() == []


def test_a_kept_version_of_unknown_age_keeps_every_deletion(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version published without a catalog read time (by hand, or by a tool) may hold any
    deleted item: the build keeps the tombstones, and still succeeds."""
    monkeypatch.setattr("indexer.build.TOMBSTONE_GRACE", timedelta(0))
    load(runtime, small_catalog(tmp_path, 10))
    run_build(runtime)
    store = IndexStore(runtime.settings.index_dir)
    path = store.folder("v000001") / store.manifest_name
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key in ("catalog_read_at", "built_at"):
        manifest.pop(key)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    _, found = search_ids(runtime, "museum")
    with runtime.write_session() as session:
        assert delete_items(session, [found[0]]) == []
    runtime.clock = lambda: utcnow() + timedelta(seconds=2)  # past the deletion, no sleep
    assert run_build(runtime).version == "v000002"
    with runtime.session() as session:
        assert list(session.scalars(select(ItemTombstone.item_id))) == [found[0]]
