"""Pages that hold (engine.search.deep): walking next_offset from 0 visits every result once,
in exactly the order of one page of the same total size, and ends only when nothing is left.
Also `total`: the walk's length when it is exact."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.core.clock import utcnow
from engine.runtime import Runtime
from engine.search.request import MAX_DEPTH, SearchRequest
from engine.users.events import EventIn
from engine.users.recording import record_events

QUERIES = [None, "hiking", "quiet beach with snorkeling", "museums and food", "kyoto temples"]
USERS = [None, "beach-lover", "hiker"]
FILTERS: list[dict[str, Any] | None] = [
    None,
    {"continent": "Europe"},
    {"avg_daily_cost_usd": {"lte": 120}},
    {"tags": {"any": ["beach", "hiking"]}},
    {"family_friendly": True, "continent": {"in": ["Asia", "Europe"]}},
]

searches = st.fixed_dictionaries(
    {
        "q": st.sampled_from(QUERIES),
        "user_id": st.sampled_from(USERS),
        "filters": st.sampled_from(FILTERS),
        "diversity": st.sampled_from([0.0, 0.4]),
        "max_per_category": st.sampled_from([None, None, 3]),
        "category": st.sampled_from([None, None, "beach"]),
    }
)


@pytest.fixture
def with_users(built: Runtime) -> Runtime:
    """The sample plus two users with a history (purchases are excluded from their results)."""
    now = utcnow()
    history = {
        "beach-lover": [("maafushi-maldives", "purchase"), ("bali-indonesia", "click")],
        "hiker": [("zermatt-switzerland", "view"), ("banff-canada", "purchase")],
    }
    events = [
        EventIn(user, item, kind, now - timedelta(minutes=10 - i))
        for user, items in history.items()
        for i, (item, kind) in enumerate(items)
    ]
    with built.write_session(users=set(history)) as session:
        record_events(session, events, built.settings, built.vectors)
    return built


def walk(runtime: Runtime, request: dict[str, Any], k: int, limit: int) -> tuple[list[str], Any]:
    """The ids of every page from offset 0 (up to `limit` results), and the first response."""
    ids: list[str] = []
    offset: int | None = 0
    first = None
    with runtime.session() as session:
        while offset is not None and len(ids) < limit:
            out = runtime.searcher.search(session, SearchRequest(k=k, offset=offset, **request))
            first = first or out
            ids += [h.id for h in out.results]
            offset = out.next_offset
    return ids, first


def one_page(runtime: Runtime, request: dict[str, Any], size: int) -> list[str]:
    with runtime.session() as session:
        out = runtime.searcher.search(session, SearchRequest(k=size, **request))
    return [h.id for h in out.results]


@settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # a search per page: shrinking would take minutes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=searches, k=st.sampled_from([1, 5, 10, 17, 50]))
def test_walking_the_pages_is_one_long_page(
    with_users: Runtime, request: dict[str, Any], k: int
) -> None:
    limit = 120 if k >= 10 else 40  # the sample has 325 items; a walk of 1-result pages is long
    ids, first = walk(with_users, request, k, limit)
    assert len(ids) == len(set(ids)), "a result came twice"
    size = len(ids) + 1  # one more: says whether the walk ended with results left
    whole = one_page(with_users, request, size)
    assert ids == whole[: len(ids)], "the walk left the order of one page"
    ended = len(ids) < limit
    if ended:
        assert len(whole) == len(ids), "the walk ended while results were left"
        if first.total_relation == "eq":
            assert first.total == len(ids), f"total is not what the walk visited: {request}"


@pytest.mark.parametrize("q", ["hiking", "quiet beach with snorkeling"])
def test_the_whole_catalog_walks_to_its_end(built: Runtime, q: str) -> None:
    """The issue's reproduction: k=10 from 0 visits every item once (325), not 260."""
    ids, first = walk(built, {"q": q}, 10, MAX_DEPTH)
    assert len(ids) == len(set(ids)) == first.total == 325
    assert first.total_relation == "eq"
    assert ids == one_page(built, {"q": q}, 400)[:325]


def test_pages_reach_the_documented_depth_and_no_further(built: Runtime) -> None:
    from engine.core.contract import validate
    from engine.core.errors import InvalidInput
    from engine.search.request import SearchQuery

    with pytest.raises(InvalidInput, match="offset"):
        validate(SearchQuery, {"q": "x", "k": 20, "offset": MAX_DEPTH - 10})
    assert validate(SearchQuery, {"q": "x", "k": 10, "offset": MAX_DEPTH - 10}).offset == 990
