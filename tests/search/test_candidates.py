"""After a bulk update the delta shadows more rows than a search wants: the candidates stage
fetches a bounded number from the index and looks further only while too few live items
score at least the last row it fetched (engine.search.candidates._retrieve)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from engine.catalog.items import ItemIn, upsert_items
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
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
