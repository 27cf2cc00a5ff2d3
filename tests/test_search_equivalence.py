"""The lean search path returns exactly what the path before it returned (issue 9).

tests/_legacy_search.py is the old engine/search.py: per request it loaded every candidate's
fields from SQL (up to three times). Both paths run here over the same database, index, delta,
ranker and frozen clock, on both databases; results must match in ids and order, scores and
explanations to 1e-6, and the first stage's candidates and features too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from engine.catalog.items import ItemIn, delete_items, upsert_items
from engine.core.clock import iso_z, utcnow
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from engine.users.events import validate_event
from engine.users.recording import record_events
from indexer.build import build
from tests import _legacy_search
from tests.conftest import ROOT, SAMPLE_CATALOG

ATTRIBUTES = "avg_daily_cost_usd,family_friendly,lat"
REQUESTS = [
    SearchRequest(q="a quiet beach with turquoise water"),
    SearchRequest(q="Eiffel Tower and the Louvre", k=5),
    SearchRequest(q="good food", k=20, category="desert"),
    SearchRequest(q="good food", category="no-such-category"),
    SearchRequest(q="xylospongium festival"),  # no word in the catalog
    SearchRequest(q="ancient temples", user_id="foodie-1"),
    SearchRequest(q="wine", category="countryside", user_id="wine-lover-1", exclude_seen="none"),
    SearchRequest(user_id="beach-lover-2"),  # recommend from history
    SearchRequest(user_id="luxury-2", exclude_seen="all", k=30),
    SearchRequest(user_id="family-2", category="beach", k=5),
    SearchRequest(context_items=("zermatt-switzerland", "chamonix-france")),  # session
    SearchRequest(q="hiking", context_items=("zermatt-switzerland",), user_id="desert-explorer-2"),
    SearchRequest(),  # popular
    SearchRequest(category="island", k=5),
    SearchRequest(user_id="never-seen", k=7),
    SearchRequest(q="museums and old towns", user_id="foodie-1", explain=True, k=100),
]


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """One frozen clock for both paths, so popularity decay and freshness agree exactly."""
    frozen = utcnow()
    monkeypatch.setattr("engine.search.pipeline.utcnow", lambda: frozen)
    monkeypatch.setattr(_legacy_search, "utcnow", lambda: frozen)
    return frozen


@pytest.fixture
def history(built: Runtime, now: datetime) -> Runtime:
    """The sample catalog with created_at on some items (in the index version), and the
    sample events recorded (user features, popularity, co-visits)."""
    rows = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines()]
    dated = [
        ItemIn(**{**row, "created_at": f"20{10 + n % 15}-0{1 + n % 9}-1{n % 10}T08:00:00Z"})
        for n, row in enumerate(rows[::3])
    ]
    with built.write_session() as session:
        upsert_items(session, dated)
    with built.session() as session:
        build(built, session)
    events = [
        validate_event(json.loads(line), now=now)
        for line in (ROOT / "data" / "events.jsonl").read_text().splitlines()
    ]
    with built.write_session() as session:
        record_events(session, events, built.settings, built.vectors)
    return built


def rankers(names: tuple[str, ...]) -> Iterator[tuple[str, LinearRanker]]:
    yield "prior", LinearRanker.prior()
    rng = np.random.default_rng(7)  # every feature weighs, attributes included
    yield (
        "dense",
        LinearRanker(
            names,
            rng.normal(size=len(names)),
            -1.0,
            rng.normal(size=len(names)),
            np.ones(len(names)),
        ),
    )


def assert_same(runtime: Runtime, requests: list[SearchRequest]) -> None:
    settings = runtime.settings.replace(feature_attributes=ATTRIBUTES)
    names = Searcher(settings, runtime.embedder).feature_names
    for label, model in rankers(names):
        lean = Searcher(
            settings, runtime.embedder, runtime.live, runtime.vectors, lambda m=model: m, None,
            runtime.delta,
        )  # fmt: skip
        legacy = _legacy_search.Searcher(
            settings, runtime.embedder, runtime.live, runtime.vectors, lambda m=model: m, None,
            runtime.delta,
        )  # fmt: skip
        for request in requests:
            where = f"{label}: {request}"
            with runtime.session() as session:
                new_stage = lean.first_stage(session, request)
                old_stage = legacy.first_stage(session, request)
                new = lean.search(session, request)
                old = legacy.search(session, request)
            assert [c.item_id for c in new_stage.candidates] == [
                c.item_id for c in old_stage.candidates
            ], where
            np.testing.assert_allclose(new_stage.x, old_stage.x, rtol=0, atol=1e-9, err_msg=where)
            assert new.mode == old.mode and new.index_version == old.index_version, where
            assert [h.id for h in new.results] == [h.id for h in old.results], where
            for a, b in zip(new.results, old.results, strict=True):
                assert abs(a.score - b.score) <= 1e-6, where
                assert (a.title, a.category, a.tags, a.attributes) == (
                    b.title,
                    b.category,
                    b.tags,
                    b.attributes,
                ), where
                if request.explain:
                    assert a.explanation is not None and b.explanation is not None
                    assert a.explanation["contributions"] == pytest.approx(
                        b.explanation["contributions"], abs=1e-6
                    ), where
                else:
                    assert a.explanation is None and b.explanation is None
            assert set(new.timings_ms) == set(old.timings_ms) | {"user"}, where


def test_same_results_as_before(history: Runtime) -> None:
    assert_same(history, REQUESTS)


def test_same_results_with_a_delta_and_deletions(history: Runtime, now: datetime) -> None:
    """Items written and deleted since the build: a new item, an attribute change, deletes."""
    with history.write_session() as session:
        upsert_items(
            session,
            [
                ItemIn(
                    id="quokka-island",
                    title="Quokkaville",
                    text="A tiny island famous for its beaches, wine and friendly marsupials.",
                    category="island",
                    tags=("beaches", "wildlife"),
                    attributes={"avg_daily_cost_usd": 80, "family_friendly": True},
                    created_at=iso_z(now - timedelta(days=3)),
                )
            ],
        )
        tokyo = history.searcher.artifact()
        row = tokyo.row_of("tokyo-japan")
        assert row is not None and tokyo.items is not None
        fields = tokyo.items[row]
        upsert_items(
            session,
            [
                ItemIn(
                    id="tokyo-japan",
                    title=fields.title,
                    text=_text_of(history, "tokyo-japan"),
                    category=fields.category,
                    tags=fields.tags,
                    attributes={**fields.attributes, "avg_daily_cost_usd": 999},
                    created_at=iso_z(fields.created_at),
                )
            ],
        )
        assert delete_items(session, ["paris-france", "kyoto-japan"]) == []
    snapshot = history.delta.refresh()
    assert snapshot is not None and snapshot.ids == ["quokka-island"]
    assert snapshot.items["tokyo-japan"].attributes["avg_daily_cost_usd"] == 999
    assert_same(
        history,
        [
            SearchRequest(q="island beaches with wine"),
            SearchRequest(q="Eiffel Tower and the Louvre", k=5),
            SearchRequest(q="temples in Japan", k=5, explain=True),
            SearchRequest(user_id="foodie-1", k=20),
            SearchRequest(category="island", k=50),
            SearchRequest(q="marsupials", category="island", user_id="beach-lover-2"),
        ],
    )


def _text_of(runtime: Runtime, item_id: str) -> str | None:
    from engine.catalog.items import get_item

    with runtime.session() as session:
        return get_item(session, item_id).text


NOW_A_MUSEUM = "Closed for the season; its old mill is now a museum of industrial history."


def test_a_bulk_update_fetches_a_bounded_number_and_the_same_candidates(
    history: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120 items re-embedded since the build: the delta shadows more rows than a search wants.
    The old path fetched one more row from the index per shadowed item (and filtered them per
    search from a fresh union of sets); this one fetches a bounded number and looks further
    while fewer than `want` live items score at least the last row it fetched (here the
    delta's new vectors score below it). Every source finds the same items with the same
    ranks. (What differs by design: the old path also gave an index rank past `want` to
    a BM25 hit that its larger fetch happened to reach.)"""
    # The 120 nearest items to a query, now about something else: its first fetch finds only
    # shadowed rows, and their new vectors score below that fetch's last row.
    beach = "a quiet beach with turquoise water"
    artifact = history.searcher.artifact()
    _, nearest = artifact.ann.search(history.embedder.encode_query(beach), 120)
    updated = {artifact.ids[r] for r in nearest[0].tolist()}
    rows = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines()]
    with history.write_session() as session:
        museums = [r for r in rows if r["id"] in updated]
        for n, row in enumerate(museums):
            row.update(title=f"Mill museum {n}", text=NOW_A_MUSEUM, category="culture")
            row["tags"] = ["museum"]
        upsert_items(session, [ItemIn(**row) for row in museums])
    snapshot = history.delta.refresh()
    assert snapshot is not None and len(snapshot.shadows()) == 120 and not snapshot.pending
    fetched: list[int] = []
    ann = history.searcher.artifact().ann
    search = ann.search

    def counted(vector: np.ndarray, k: int, **kwargs: object) -> object:
        fetched.append(k)
        return search(vector, k, **kwargs)

    monkeypatch.setattr(ann, "search", counted)
    settings = history.settings
    lean = Searcher(settings, history.embedder, history.live, history.vectors, None, None,
                    history.delta)  # fmt: skip
    legacy = _legacy_search.Searcher(
        settings, history.embedder, history.live, history.vectors, None, None, history.delta
    )
    for request in [
        SearchRequest(q=beach),
        SearchRequest(q="a museum of industrial history", k=20),
        SearchRequest(q="ancient temples", user_id="foodie-1"),
        SearchRequest(user_id="beach-lover-2", k=30),
        SearchRequest(q="good food", category="desert"),
    ]:
        want = max(settings.candidates, request.k)
        with history.session() as session:
            fetched.clear()
            new = lean.first_stage(session, request).candidates
            new_fetches = list(fetched)
            fetched.clear()
            old = legacy.first_stage(session, request).candidates
            old_fetches = list(fetched)
        if request.category is None:  # (a category's rows are fewer: all are fetched)
            assert min(old_fetches) >= want + 120, old_fetches  # past every shadowed row
        # want + 16 + the user's exclusions (a few here) + at most `want` for the shadows,
        # then 4x that while too few live rows came back.
        assert new_fetches[0] <= 2 * want + 16 + 10, new_fetches
        if request.q == beach:
            assert len(new_fetches) > 1, new_fetches  # it had to look further

        assert sources(new, want) == sources(old, want), request
        # A re-embedded item is a candidate with its new fields (the delta's), not the row's.
        assert all(c.item == snapshot.items[c.item_id] for c in new if c.item_id in snapshot.items)


def sources(candidates: list[Any], want: int) -> dict[str, tuple[Any, ...]]:
    """What each source said of each candidate it found: (index rank within `want`, BM25 rank,
    co-visit rank, popularity)."""
    out = {}
    for c in candidates:
        ann = c.ann_rank if c.ann_rank is not None and c.ann_rank < want else None
        if ann is not None or c.lexical_rank is not None or c.covisit_rank is not None:
            out[c.item_id] = (ann, c.lexical_rank, c.covisit_rank, round(c.popularity, 9))
    return out
