"""`total` without facets, category or filters (engine.search.selection counts it from the
excluded, deleted and rewritten ids alone, with no mask of the version's rows) against the
same selection counted with facets (the mask) and by hand, through deletions, writes since
the build and a user's exclusions."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from engine.catalog.items import ItemIn, delete_items, upsert_items
from engine.core.clock import utcnow
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.users.events import EventIn
from engine.users.recording import record_events
from tests.conftest import SAMPLE_CATALOG

ITEMS = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines() if line.strip()]


def totals(runtime: Runtime, **fields: Any) -> tuple[int, int]:
    """(total without facets, total with facets) of the same request."""
    out = []
    for facets in ((), ("category",)):
        with runtime.session() as session:
            request = SearchRequest(k=5, facets=facets, **fields)
            found = runtime.searcher.search(session, request)
        assert found.total_relation == "eq"
        out.append(found.total)
    return out[0], out[1]


def item_in(item: dict[str, Any], **changes: Any) -> ItemIn:
    fields = ("id", "title", "text", "category", "tags", "attributes")
    return ItemIn(**{**{k: item[k] for k in fields}, **changes})


def test_a_total_without_facets_counts_what_the_facets_count(built: Runtime) -> None:
    assert totals(built) == (len(ITEMS), len(ITEMS))
    paris, rome = (
        next(i for i in ITEMS if i["id"] == name) for name in ("paris-france", "rome-italy")
    )
    with built.write_session() as session:
        assert delete_items(session, ["paris-france"]) == []
        upsert_items(
            session,
            [
                item_in(paris, id="new-paris"),  # new since the build
                item_in(rome, tags=["brand-new-tag"]),  # rewritten: its fields are the delta's
            ],
        )
    built.delta.refresh()
    assert totals(built) == (len(ITEMS), len(ITEMS))  # one gone, one come, one rewritten

    with built.write_session(users={"buyer"}) as session:
        bought = [
            EventIn("buyer", item_id, "purchase", utcnow() - timedelta(minutes=1))
            for item_id in ("new-paris", "rome-italy", "lisbon-portugal")
        ]
        record_events(session, bought, built.settings, built.vectors)
    # A user's purchases are excluded, whether the version or the delta holds them.
    assert totals(built, user_id="buyer") == (len(ITEMS) - 3, len(ITEMS) - 3)
    with built.write_session() as session:
        delete_items(session, ["new-paris"])
    assert totals(built) == (len(ITEMS) - 1, len(ITEMS) - 1)


def test_a_ranked_total_past_max_depth_is_that_depth_counted_or_not(
    built: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ranked search's pages stop at MAX_DEPTH: past it, total is MAX_DEPTH ("gte"), found
    without counting when the version's rows less every exclusion exceed it, and the same as
    the count with facets gives; a user whose purchases bring the selection under it gets the
    exact count."""
    depth = len(ITEMS) - 2
    monkeypatch.setattr("engine.search.selection.MAX_DEPTH", depth)

    def total(**fields: Any) -> tuple[int, str]:
        answers = set()
        for facets in ((), ("category",)):
            with built.session() as session:
                request = SearchRequest(q="beach", k=5, facets=facets, **fields)
                found = built.searcher.search(session, request)
            answers.add((found.total, found.total_relation))
        assert len(answers) == 1, answers  # counted from the mask or not, one answer
        return answers.pop()

    built.delta.refresh()
    assert total() == (depth, "gte")
    with built.write_session(users={"one", "three"}) as session:
        bought = [
            EventIn(user, item["id"], "purchase", utcnow() - timedelta(minutes=1))
            for user, n in (("one", 1), ("three", 3))
            for item in ITEMS[:n]
        ]
        record_events(session, bought, built.settings, built.vectors)
    assert total(user_id="one") == (depth, "gte")  # one fewer is still past the depth
    assert total(user_id="three") == (len(ITEMS) - 3, "eq")
