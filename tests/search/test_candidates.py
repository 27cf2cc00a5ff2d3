"""The candidates stage (engine.search.candidates._retrieve): after a bulk update the delta
shadows more rows than a search wants, and it fetches a bounded number from the index and
looks further only while too few live items score at least the last row it fetched; and it
looks up whether ids exist only as far down as it keeps them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from engine.catalog.items import ItemIn, delete_items, upsert_items
from engine.runtime import Runtime
from engine.search.candidates import _OVERFETCH
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from engine.users.state import SqlState
from tests.conftest import SAMPLE_CATALOG

NOW_A_MUSEUM = "Closed for the season; its old mill is now a museum of industrial history."
BEACH = "a quiet beach with turquoise water"


def test_a_bulk_update_fetches_a_bounded_number(
    built: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 120 nearest items to a query, now about something else: its first fetch finds only
    # shadowed rows, and their new vectors score below that fetch's last row.
    artifact = built.searcher.artifact()
    _, nearest = artifact.ann.search(built.embedder.encode_query(BEACH), 120)
    updated = {artifact.ids[r] for r in nearest[0].tolist()}
    rows = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines()]
    museums = [r for r in rows if r["id"] in updated]
    for n, row in enumerate(museums):
        row.update(title=f"Mill museum {n}", text=NOW_A_MUSEUM, category="culture")
        row["tags"] = ["museum"]
    with built.write_session() as session:
        upsert_items(session, [ItemIn(**row) for row in museums])
    snapshot = built.delta.refresh()
    assert snapshot is not None and len(snapshot.shadows()) == 120 and not snapshot.pending

    fetched: list[int] = []
    search = artifact.ann.search

    def counted(vector: np.ndarray, k: int, **kwargs: Any) -> Any:
        fetched.append(k)
        return search(vector, k, **kwargs)

    monkeypatch.setattr(artifact.ann, "search", counted)
    searcher = Searcher(
        built.settings, built.embedder, live=built.live, vectors=built.vectors, delta=built.delta
    )
    for request in [
        SearchRequest(q=BEACH),
        SearchRequest(q="a museum of industrial history", k=20),
        SearchRequest(user_id="foodie-1", q="ancient temples"),
        SearchRequest(q="good food", category="desert"),
    ]:
        want = max(built.settings.candidates, request.k)
        fetched.clear()
        with built.read_session() as session:
            candidates = searcher.first_stage(session, request).candidates
        # want + 16 + the user's exclusions + at most `want` for the shadows, then 4x that
        # while too few live rows came back.
        assert fetched[0] <= 2 * want + 16 + 10, fetched
        if request.q == BEACH:
            assert len(fetched) > 1, fetched  # it had to look further
            ranked = [c for c in candidates if c.ann_rank is not None]
            assert len(ranked) >= want  # and found enough live items
        # A re-embedded item is a candidate with its new fields (the delta's), not the row's.
        assert all(c.item == snapshot.items[c.item_id] for c in candidates if c.item_id in updated)


def test_ann_ids_below_the_best_live_ones_are_not_looked_up(
    built: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the best `want` ANN ids all exist, the ones below them (that BM25 does not also
    find) are never looked up; once one of the best is deleted, every id is, and the next
    live id takes its place."""
    asked: list[str] = []
    live_items = SqlState.live_items

    def counted(self: SqlState, item_ids: list[str]) -> Any:
        asked.extend(item_ids)
        return live_items(self, item_ids)

    monkeypatch.setattr(SqlState, "live_items", counted)
    want = built.settings.candidates
    request = SearchRequest(q="snorkeling over coral reefs")
    found: list[str] = []

    def ann_ranked() -> list[str]:
        """The ANN-ranked candidates' ids, by ANN rank; every candidate's id into `found`."""
        asked.clear()
        with built.read_session() as session:
            stage = built.searcher.first_stage(session, request)
        found[:] = [c.item_id for c in stage.candidates]
        ranked = sorted(
            (c for c in stage.candidates if c.ann_rank is not None), key=lambda c: c.ann_rank
        )
        assert [c.ann_rank for c in ranked[:want]] == list(range(want))
        return [c.item_id for c in ranked]

    before = ann_ranked()
    artifact = built.searcher.artifact()
    _, rows = artifact.ann.search(built.embedder.encode_query(request.q), 3 * want)
    nearest = [artifact.ids[r] for r in rows[0].tolist()]
    assert nearest[:want] == before[:want]
    below = [i for i in nearest[want:] if i not in found]  # neither kept nor a BM25 hit
    assert below and not set(below) & set(asked)  # never looked up

    with built.write_session() as session:
        assert delete_items(session, [nearest[0]]) == []
    after = ann_ranked()
    assert nearest[0] not in after
    assert after[: want - 1] == nearest[1:want] and after[want - 1] == nearest[want]
    assert set(nearest[: want + _OVERFETCH]) <= set(asked)  # every id fetched was looked up
