"""Totals and facets (engine.search.selection, engine.catalog.facets) against counts made by
hand from the sample catalog's file, through deletions and writes since the build."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from engine.catalog.facets import MAX_VALUES
from engine.core.errors import InvalidInput
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from tests.conftest import SAMPLE_CATALOG

ITEMS = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines() if line.strip()]
FACETS = ("category", "tags", "continent", "family_friendly", "avg_daily_cost_usd")


def by_hand(keep: Any) -> tuple[int, dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """total, facets and facet_stats over the sample's items that `keep` accepts."""
    kept = [i for i in ITEMS if keep(i)]
    facets: dict[str, Counter[str]] = {n: Counter() for n in FACETS[:4]}
    for item in kept:
        facets["category"][item["category"]] += 1
        facets["tags"].update(item["tags"])
        facets["continent"][item["attributes"]["continent"]] += 1
        facets["family_friendly"][json.dumps(item["attributes"]["family_friendly"])] += 1
    costs = [i["attributes"]["avg_daily_cost_usd"] for i in kept]
    stats = {"avg_daily_cost_usd": {"min": float(min(costs)), "max": float(max(costs))}}
    return len(kept), {n: dict(c) for n, c in facets.items()}, stats


def most(counts: dict[str, int]) -> dict[str, int]:
    """The MAX_VALUES most frequent values, most first, then by value."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VALUES])


def search(runtime: Runtime, **fields: Any):  # type: ignore[no-untyped-def]
    with runtime.session() as session:
        return runtime.searcher.search(session, SearchRequest(**{"facets": FACETS, **fields}))


CASES = [
    ({}, lambda i: True),
    ({"filters": {"continent": "Europe"}}, lambda i: i["attributes"]["continent"] == "Europe"),
    (
        {"category": "beach", "filters": {"avg_daily_cost_usd": {"lte": 120}}},
        lambda i: i["category"] == "beach" and i["attributes"]["avg_daily_cost_usd"] <= 120,
    ),
    ({"filters": {"tags": {"any": ["hiking"]}}}, lambda i: "hiking" in i["tags"]),
]


def test_counts_are_those_made_by_hand(built: Runtime) -> None:
    for fields, keep in CASES:  # one built catalog for every case: a build is the cost here
        for q in (None, "quiet beach with snorkeling"):
            out = search(built, q=q, k=5, **fields)
            total, facets, stats = by_hand(keep)
            assert (out.total, out.total_relation) == (total, "eq"), (fields, q)
            assert out.facets == {n: most(c) for n, c in facets.items()}, (fields, q)
            tags = list(out.facets["tags"].values())
            assert tags == sorted(tags, reverse=True)
            assert out.facet_stats == stats, (fields, q)


def test_unknown_facets_are_named(built: Runtime) -> None:
    with pytest.raises(InvalidInput) as raised:
        search(built, q="x", facets=("category", "colour", "mood"))
    assert "colour" in str(raised.value) and "mood" in str(raised.value)
    assert {p.field for p in raised.value.problems} == {"facets"}


def test_deletions_and_writes_since_the_build_are_counted(built: Runtime) -> None:
    from engine.catalog.items import ItemIn, delete_items, upsert_items

    europe = {"filters": {"continent": "Europe"}}
    before = search(built, k=5, **europe)
    paris = next(i for i in ITEMS if i["id"] == "paris-france")
    with built.write_session() as session:
        assert delete_items(session, ["paris-france"]) == []
        moved = {**paris, "id": "new-paris", "attributes": {**paris["attributes"]}}
        moved["tags"] = ["brand-new-tag"]
        upsert_items(
            session,
            [
                ItemIn(
                    **{
                        k: moved[k]
                        for k in ("id", "title", "text", "category", "tags", "attributes")
                    }
                )
            ],
        )
    built.delta.refresh()
    after = search(built, k=5, **europe)
    assert after.total == before.total  # one gone, one come
    assert after.facets["tags"]["brand-new-tag"] == 1
    for tag in paris["tags"]:
        assert after.facets["tags"].get(tag, 0) == before.facets["tags"][tag] - 1
    with built.write_session() as session:
        delete_items(session, ["new-paris"])
    assert search(built, k=5, **europe).total == before.total - 1


def test_a_users_exclusions_and_the_category_cap_count(built: Runtime) -> None:
    from datetime import timedelta

    from engine.core.clock import utcnow
    from engine.users.events import EventIn
    from engine.users.recording import record_events

    with built.write_session(users={"buyer"}) as session:
        events = [EventIn("buyer", "paris-france", "purchase", utcnow() - timedelta(minutes=1))]
        record_events(session, events, built.settings, built.vectors)
    everyone = search(built, q="city breaks", k=5)
    buyer = search(built, q="city breaks", k=5, user_id="buyer")
    assert buyer.total == everyone.total - 1  # the purchase is excluded from the results
    capped = search(built, q="city breaks", k=5, max_per_category=2)
    assert capped.total == 2 * len(everyone.facets["category"])  # every category has 2+
