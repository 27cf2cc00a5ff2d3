"""Search relevance on the sample catalog, filters, deletes, and version swaps."""

from __future__ import annotations

import pytest

from engine.catalog.items import delete_items
from engine.core.contract import validate
from engine.core.errors import InvalidInput
from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from engine.search.request import SearchQuery, SearchRequest
from indexer.build import build


def search(runtime: Runtime, q: str, k: int = 10, category: str | None = None):  # type: ignore[no-untyped-def]
    with runtime.session() as session:
        return runtime.searcher.search(session, SearchRequest(q=q, k=k, category=category))


@pytest.mark.parametrize(
    ("query", "category", "min_share"),
    [
        ("a relaxing beach holiday with white sand and turquoise water", {"beach", "island"}, 0.7),
        ("skiing and snowboarding in the alps", {"mountain"}, 0.9),
        ("see lions and elephants on safari", {"nature"}, 0.9),
        ("sand dunes and camel treks in the desert", {"desert"}, 0.9),
    ],
)
def test_queries_find_the_right_kind_of_place(
    built: Runtime, query: str, category: set[str], min_share: float
) -> None:
    results = search(built, query).results
    assert len(results) == 10
    assert results[0].category in category
    share = sum(r.category in category for r in results) / len(results)
    assert share >= min_share, [(r.id, r.category) for r in results]
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


def test_named_places_come_first(built: Runtime) -> None:
    assert search(built, "Eiffel Tower and the Louvre").results[0].id == "paris-france"
    assert search(built, "Tokyo, Japan").results[0].id == "tokyo-japan"


def test_category_filter_returns_only_that_category(built: Runtime) -> None:
    results = search(built, "good food", k=20, category="desert").results
    assert 0 < len(results) <= 20 and {r.category for r in results} == {"desert"}
    assert search(built, "good food", category="no-such-category").results == []


def test_k_bounds_results(built: Runtime) -> None:
    assert len(search(built, "mountains", k=3).results) == 3
    everything = search(built, "mountains", k=100).results
    assert len(everything) == 100 and len({r.id for r in everything}) == 100


def test_deleted_items_disappear_before_the_next_build(built: Runtime) -> None:
    top = [r.id for r in search(built, "Eiffel Tower and the Louvre", k=5).results]
    with built.session() as session:
        assert delete_items(session, top[:3]) == []
    after = [r.id for r in search(built, "Eiffel Tower and the Louvre", k=5).results]
    assert len(after) == 5 and not set(top[:3]) & set(after)
    assert after[:2] == top[3:5]


def test_server_swaps_to_a_newly_published_version(built: Runtime) -> None:
    first = search(built, "beach").index_version
    with built.session() as session:
        delete_items(session, ["paris-france"])
    with built.session() as session:
        report = build(built, session)
    assert report.version != first
    assert search(built, "beach").index_version == report.version
    IndexStore(built.settings.index_dir).point_current_at(first)
    assert search(built, "beach").index_version == first


def parse(raw: dict[str, object], max_k: int = 100) -> SearchRequest:
    return validate(SearchQuery, raw, context={"max_k": max_k}).to_request()


def test_request_validation_names_fields() -> None:
    with pytest.raises(InvalidInput) as info:
        parse({"q": 5, "k": "zero", "category": 3, "sort": "x", "context_items": [1]})
    fields = sorted(p.field for p in info.value.problems)
    assert fields == sorted(["sort", "q", "category", "k", "context_items"])
    with pytest.raises(InvalidInput, match="between 1 and 100, got 101"):
        parse({"q": "x", "k": 101})
    assert parse({"q": " x ", "k": "5"}) == SearchRequest(q="x", k=5)
    parsed = parse({"q": "", "user_id": "u", "context_items": "a, b,a", "exclude_seen": "false"})
    assert parsed == SearchRequest(user_id="u", context_items=("a", "b"), exclude_seen="none")
