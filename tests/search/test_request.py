"""What users of a search engine expect, through /v1/search: filters applied in the first
stage, pages, diversity, similar items, and merchandising rules with their explanations."""

from __future__ import annotations

import json
from typing import Any

from engine.runtime import Runtime

JAPAN = {
    "tokyo-japan",
    "kyoto-japan",
    "osaka-japan",
    "mount-fuji-japan",
    "niseko-japan",
    "ishigaki-japan",
    "shirakawa-go-japan",
}


def search(client: Any, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json=body)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["results"]]


def test_filters_apply_in_the_first_stage(client: Any, built: Runtime) -> None:
    # A query about beaches; only Japan allowed: k Japanese items, not the few beaches that
    # would survive a post-filter of the top candidates.
    body = search(client, q="white sand beach and snorkeling", k=5, filters={"country": "Japan"})
    assert len(body["results"]) == 5 and set(ids(body)) <= JAPAN
    everything = search(client, q="white sand beach", k=7, filters={"country": "Japan"})
    assert set(ids(everything)) == JAPAN and everything["next_offset"] is None
    cheap = search(
        client, q="city break", k=10, filters={"avg_daily_cost_usd": {"gte": 50, "lte": 100}}
    )
    assert len(cheap["results"]) == 10
    assert all(50 <= r["attributes"]["avg_daily_cost_usd"] <= 100 for r in cheap["results"])
    mixed = search(
        client,
        q="mountains",
        k=10,
        filters={"continent": {"in": ["Asia", "Europe"]}, "family_friendly": True},
    )
    assert all(r["attributes"]["continent"] in ("Asia", "Europe") for r in mixed["results"])
    assert all(r["attributes"]["family_friendly"] is True for r in mixed["results"])
    tagged = search(client, q="food", k=10, filters={"tags": {"all": ["beaches", "food"]}})
    assert tagged["results"]
    assert all({"beaches", "food"} <= set(r["tags"]) for r in tagged["results"])
    # no query: recommendations and popular items obey the filters too
    for extra in ({"user_id": "nobody-yet"}, {"context_items": ["paris-france"]}):
        body = search(client, k=5, filters={"country": "Japan"}, **extra)
        assert len(body["results"]) == 5 and set(ids(body)) <= JAPAN
    # GET takes the filters as a JSON string
    got = client.get("/v1/search", query_string={"q": "temples", "filters": '{"country": "Japan"}'})
    assert got.status_code == 200 and set(ids(got.get_json())) <= JAPAN


def test_bad_filters_are_422_naming_the_field(client: Any, built: Runtime) -> None:
    for filters, field in (
        ({"colour": "red"}, "filters.colour"),
        ({"country": 3}, "filters.country"),
        ({"avg_daily_cost_usd": {"gte": "cheap"}}, "filters.avg_daily_cost_usd"),
    ):
        response = client.post("/v1/search", json={"q": "x", "filters": filters})
        assert response.status_code == 422, response.get_json()
        assert [p["field"] for p in response.get_json()["problems"]] == [field]
    bad_json = client.get("/v1/search", query_string={"q": "x", "filters": "{country"})
    assert bad_json.status_code == 422
    assert bad_json.get_json()["problems"][0]["field"] == "filters"


def test_filters_see_fields_written_since_the_build(client: Any, built: Runtime) -> None:
    moved = {
        "id": "paris-france",
        "title": "Paris, France",
        "text": "Museums, cafés and the Seine.",
        "category": "city",
        "attributes": {"country": "Japan", "continent": "Asia"},
    }
    assert client.post("/v1/items", json=moved).status_code in (200, 201)
    built.delta.refresh()
    body = search(client, q="museums and cafés", k=8, filters={"country": "Japan"})
    assert "paris-france" in ids(body)
    france = search(client, q="museums and cafés", k=8, filters={"country": "France"})
    assert "paris-france" not in ids(france)


def test_two_pages_of_five_are_one_page_of_ten(client: Any, built: Runtime) -> None:
    for request in ({"q": "quiet islands"}, {"user_id": "page-user"}, {}):
        ten = search(client, k=10, **request)
        first = search(client, k=5, **request)
        second = search(client, k=5, offset=first["next_offset"], **request)
        assert first["next_offset"] == 5 and second["next_offset"] == 10
        assert ids(first) + ids(second) == ids(ten)
        assert [r["score"] for r in first["results"] + second["results"]] == [
            r["score"] for r in ten["results"]
        ]
    last = search(client, q="temples", k=5, offset=5, filters={"country": "Japan"})
    assert len(last["results"]) == 2 and last["next_offset"] is None


def test_diversity_and_category_caps(client: Any, built: Runtime) -> None:
    plain = search(client, q="beach", k=10)
    capped = search(client, q="beach", k=10, max_per_category=2)
    categories = [r["category"] for r in capped["results"]]
    assert all(categories.count(c) <= 2 for c in set(categories))
    assert len(set(categories)) > len({r["category"] for r in plain["results"]})
    diverse = search(client, q="beach", k=10, diversity=0.7, explain=True)
    assert len(diverse["results"]) == 10 and ids(diverse) != ids(plain)
    assert ids(diverse)[0] == ids(plain)[0]  # nothing above the first to be redundant with
    assert all("diversity" in r["explanation"] for r in diverse["results"])
    off = search(client, q="beach", k=10, diversity=0)
    assert ids(off) == ids(plain)
    assert client.post("/v1/search", json={"q": "x", "diversity": 2}).status_code == 422


def test_similar_items(client: Any, built: Runtime) -> None:
    response = client.get("/v1/items/kyoto-japan/similar?k=5")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["mode"] == "similar" and len(body["results"]) == 5
    assert "kyoto-japan" not in ids(body)
    assert len(set(ids(body)) & JAPAN) >= 2  # its neighbours in meaning
    # co-visitation: items visited together become similar even when far in meaning
    events = [
        {"user_id": f"pair-{n}", "item_id": item, "type": "click", "event_id": f"pair-{n}-{item}"}
        for n in range(3)
        for item in ("kyoto-japan", "reykjavik-iceland")
    ]
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    built.watch.refresh()  # their popularity too, as a server sees it a poll later
    again = client.get("/v1/items/kyoto-japan/similar?k=10&user_id=pair-0&explain=true")
    assert "reykjavik-iceland" in ids(again.get_json())
    assert client.get("/v1/items/no-such-item/similar").status_code == 404


def test_rules_change_results_and_deleting_them_restores_the_ranking(
    client: Any, built: Runtime
) -> None:
    query = {"q": "snowy mountains for skiing", "k": 8, "explain": True}
    before = search(client, **query)
    top = ids(before)
    rules = [
        {"action": "pin", "item_id": "paris-france", "position": 2},
        {"action": "hide", "item_id": top[0]},
        {"action": "bury", "item_id": top[1], "weight": 1e6},
        {
            "action": "boost",
            "where": {"country": "Japan"},
            "weight": 50,
            "query": "Snowy  MOUNTAINS for skiing",
        },
        {"action": "hide", "item_id": top[2], "query": "another query"},
    ]
    made = [client.post("/admin/api/rules", json=r).get_json()["id"] for r in rules]
    after = search(client, **query)
    got = ids(after)
    assert got[1] == "paris-france" and top[0] not in got and top[1] not in got
    assert top[2] in got  # that rule is for another query
    assert got[0] in JAPAN or got[2] in JAPAN  # boosted
    by_id = {r["id"]: r for r in after["results"]}
    assert [e["rule_id"] for e in by_id["paris-france"]["explanation"]["rules"]] == [made[0]]
    boosted = [r for r in after["results"] if r["id"] in JAPAN]
    assert boosted and all(
        any(e["rule_id"] == made[3] for e in r["explanation"]["rules"]) for r in boosted
    )
    untouched = [r for r in after["results"] if r["id"] not in JAPAN | {"paris-france"}]
    assert all("rules" not in r["explanation"] for r in untouched)
    for rule_id in made:
        assert client.delete(f"/admin/api/rules/{rule_id}").status_code == 200
    restored = search(client, **query)
    assert ids(restored) == top
    assert [r["score"] for r in restored["results"]] == [r["score"] for r in before["results"]]
    assert json.dumps([r["explanation"] for r in restored["results"]]) == json.dumps(
        [r["explanation"] for r in before["results"]]
    )
