"""Whole items: a text longer than the model's window is embedded as overlapping windows, and
an item's query similarity is the best of them (MaxP), in the build, the index version, the
first stage, the delta and the stored vectors. The real MiniLM, FAISS, SQLite and PostgreSQL.

The items are council notes whose first ~300 tokens are the same filler; what tells them
apart is their last sentence, past the model's 256-token window: without chunks, no query
can tell them apart by meaning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from engine.catalog.items import ItemIn, embedding_text, upsert_items
from engine.core.config import Settings
from engine.core.errors import Conflict
from engine.encoder.chunking import Chunker, ChunkSpec
from engine.encoder.embedder import Embedder
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.models import ItemVector
from indexer import build as build_module
from indexer.build import build
from indexer.chunking import ChunkBuild, index_chunks

FILLER = (
    "The city council met on Tuesday to review the annual budget, the state of the roads, "
    "the new library hours, and the schedule for street cleaning in the northern districts. "
    "Members discussed parking permits, the renovation of the town hall, the bus timetable, "
    "school crossings, the recycling program, and complaints about noise near the market. "
)
TAILS = {
    "volcano": "Finally, a guide offers underwater diving trips to a submerged volcano crater.",
    "jazz": "Finally, the summer brings a jazz festival where saxophonists play on boat stages.",
    "cheese": "Finally, farmers sell aged goat cheese and honey at a mountain market on Sundays.",
    "rocket": "Finally, a private company launches small rockets from the nearby desert spaceport.",
}
QUERIES = {
    "volcano": "diving in a sunken volcano crater",
    "jazz": "saxophone music on stages on boats",
    "rocket": "orbital launch from a desert spaceport",
}


def notes(tails: dict[str, str] = TAILS) -> list[ItemIn]:
    return [
        ItemIn(id=key, title=f"Council notes {i}", text=FILLER * 4 + tail, category="notes")
        for i, (key, tail) in enumerate(tails.items())
    ]


def ingest_and_build(rt: Runtime, items: list[ItemIn]) -> Any:
    with rt.write_session() as session:
        upsert_items(session, items)
    with rt.session() as session:
        return build(rt, session)


def first_stage(rt: Runtime, q: str) -> list[tuple[str, float]]:
    """(id, query_sim), best first."""
    with rt.session() as session:
        stage = rt.searcher.first_stage(session, SearchRequest(q=q, k=4))
    j = stage.names.index("query_sim")
    found = [(c.item_id, float(x[j])) for c, x in zip(stage.candidates, stage.x, strict=True)]
    return sorted(found, key=lambda p: -p[1])


def test_windows_overlap_cover_the_text_and_stop_at_the_cap(embedder: Embedder) -> None:
    chunker = embedder.chunker(Settings())
    assert chunker is not None
    spec = chunker.spec
    assert spec.window == 254 and spec.overlap == 64  # 256 less [CLS] and [SEP]; no prompt
    text = " ".join(f"word{i}" for i in range(600))
    tokens = chunker._core.encode(text, add_special_tokens=False).tokens
    windows = chunker.extra(text)
    assert len(windows) >= 2
    spans = [chunker._core.encode(w, add_special_tokens=False).tokens for w in windows]
    # Each window is a run of the text's own tokens (cut on whole words), at most a window.
    starts = [next(i for i in range(len(tokens)) if tokens[i : i + len(s)] == s) for s in spans]
    assert all(len(s) <= spec.window for s in spans)
    # The first extra window starts about a stride in; each overlaps the one before it.
    assert spec.stride - 3 <= starts[0] <= spec.stride
    for (a, sa), b in zip(zip(starts, spans, strict=False), starts[1:], strict=False):
        assert a < b < a + len(sa) - spec.overlap + 4
    assert text.endswith(windows[-1])  # nothing past the last window
    assert chunker.extra("a short text that fits one window") == []
    tokenizer, length = embedder._batch.window()
    assert len(Chunker(tokenizer, length, "", 64, 2).extra(text)) == 1  # at most 2 windows
    prompted = Chunker(tokenizer, length, "passage: ", 64, 16).spec
    assert prompted.window < spec.window  # the prompt's tokens take room in every window


def test_a_later_window_finds_the_item(runtime: Runtime, embedder: Embedder) -> None:
    report = ingest_and_build(runtime, notes())
    artifact = runtime.live.get()
    section = artifact.manifest["chunks"]
    chunker = embedder.chunker(Settings())
    assert chunker is not None
    assert section["window"] == chunker.spec.window and section["encoded"] == section["count"]
    assert artifact.chunks is not None and artifact.chunks.size == section["count"] >= 4
    # Each chunk is its item's window, encoded as items are, and names its item's row.
    for row, item_id in enumerate(artifact.ids):
        title = f"Council notes {list(TAILS).index(item_id)}"
        windows = chunker.extra(embedding_text(title, FILLER * 4 + TAILS[item_id], "notes", []))
        mine = np.asarray(artifact.chunks.vectors)[artifact.chunks.items == row]
        assert len(mine) == len(windows) >= 1
        assert np.allclose(mine, embedder.encode(windows), atol=1e-5)
    for key, q in QUERIES.items():
        found = first_stage(runtime, q)
        assert found[0][0] == key, (q, found)
        # query_sim is the best window's, not the first window's (the filler).
        qv = embedder.encode_query(q)
        row = artifact.row_of(key)
        assert row is not None
        head = float(np.asarray(artifact.vectors())[row] @ qv)
        best = float(artifact.chunks.best(qv, np.array([row]))[0])
        assert found[0][1] == pytest.approx(max(head, best), abs=1e-5) and best > head + 0.1
    # A rebuild of the same catalog reuses every chunk.
    with runtime.session() as session:
        again = build(runtime, session)
    assert again.version != report.version
    rebuilt = runtime.live.get().manifest["chunks"]
    assert rebuilt["encoded"] == 0 and rebuilt["reused"] == section["count"]
    # A build without chunking in between: the next chunked build finds the windows in the
    # older version.
    off = Runtime(runtime.settings.replace(chunking=False), embedder=embedder)
    try:
        with off.session() as session:
            assert build(off, session).version is not None
        assert off.live.get().chunks is None
    finally:
        off.close()
    with runtime.session() as session:
        build(runtime, session)
    again_on = runtime.live.get().manifest["chunks"]
    assert again_on["encoded"] == 0 and again_on["reused"] == section["count"]


def test_without_chunking_the_tail_is_never_read(tmp_path: Any, embedder: Embedder) -> None:
    off = Settings(data_dir=tmp_path / "off", index_poll_s=0.0, chunking=False)
    rt = Runtime(off, embedder=embedder)
    try:
        ingest_and_build(rt, notes())
        artifact = rt.live.get()
        assert artifact.manifest["chunks"] is None and artifact.chunks is None
        wrong = [q for key, q in QUERIES.items() if first_stage(rt, q)[0][0] != key]
        assert wrong  # the first windows are all filler: meaning alone cannot tell them apart
    finally:
        rt.close()


def test_new_items_chunks_are_stored_and_searched_in_the_delta(
    runtime: Runtime, embedder: Embedder
) -> None:
    ingest_and_build(runtime, notes({k: v for k, v in TAILS.items() if k != "volcano"}))
    first_stage(runtime, "warm up")  # the first search starts the follower and the delta
    with runtime.write_session() as session:
        upsert_items(session, notes({"volcano": TAILS["volcano"]}))
    snapshot = runtime.delta.refresh()
    assert snapshot is not None and snapshot.ids == ["volcano"]
    assert snapshot.chunk_rows is not None and len(snapshot.chunk_rows) >= 1
    chunker = embedder.chunker(Settings())
    assert chunker is not None
    with runtime.session() as session:
        row = session.scalars(select(ItemVector).where(ItemVector.item_id == "volcano")).one()
        assert row.chunk_spec == chunker.spec.tag() and row.chunks
    assert first_stage(runtime, QUERIES["volcano"])[0][0] == "volcano"
    # The next build takes the stored chunks: it encodes none.
    ingest_and_build(runtime, [])
    section = runtime.live.get().manifest["chunks"]
    assert section["encoded"] == 0 and section["reused"] == section["count"]
    assert first_stage(runtime, QUERIES["volcano"])[0][0] == "volcano"


def test_the_recall_gate_measures_the_chunk_index() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    spec = ChunkSpec(254, 64, 16)
    chunks = ChunkBuild(spec, vectors, np.arange(3_000), 3_000, 0, 0.0)
    index_chunks(chunks, Settings(index_type="IVF64,Flat", ivf_nprobe=1), 200)
    assert chunks.recall_at_10 is not None and chunks.recall_at_10 < 0.9
    exact = ChunkBuild(spec, vectors, np.arange(3_000), 3_000, 0, 0.0)
    index_chunks(exact, Settings(index_type="flat"), 200)
    assert exact.recall_at_10 is None  # exact search needs no measure


def test_a_build_whose_chunk_index_recalls_too_little_is_not_published(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def poor(build: Any, settings: Settings, sample: int) -> None:
        index_chunks(build, settings, sample)
        build.recall_at_10 = 0.5  # as an index far too coarse for its chunks would measure

    monkeypatch.setattr(build_module, "index_chunks", poor)
    with pytest.raises(Conflict, match="recall@10 0.500"):
        ingest_and_build(runtime, notes())
    assert runtime.live.store.current_version() is None


@pytest.mark.parametrize("store", ["lite", "server"])
def test_chunks_serve_a_milvus_version_and_its_new_items(
    store: str, request: pytest.FixtureRequest, sqlite_settings: Settings, embedder: Embedder
) -> None:
    """A Milvus collection holds each item's first window; the version's other windows are
    searched beside it, and a new item's in the delta (the collection takes only its first)."""
    from tests.index.test_milvus import store_settings, strong, target_of

    target = target_of(request, store)
    assert target is not None
    settings = store_settings(sqlite_settings, target, **strong(target))
    rt = Runtime(settings, embedder=embedder)
    try:
        ingest_and_build(rt, notes({k: v for k, v in TAILS.items() if k != "volcano"}))
        artifact = rt.live.get()
        assert artifact.manifest["index"]["backend"] == "milvus"
        assert artifact.chunks is not None and artifact.chunks.size >= 3
        for key in ("jazz", "rocket"):
            assert first_stage(rt, QUERIES[key])[0][0] == key
        first_stage(rt, "warm up")  # starts the follower, which writes into the collection
        with rt.write_session() as session:
            upsert_items(session, notes({"volcano": TAILS["volcano"]}))
        snapshot = rt.delta.refresh()
        assert snapshot is not None and snapshot.chunk_rows is not None
        assert first_stage(rt, QUERIES["volcano"])[0][0] == "volcano"
    finally:
        rt.close()
