"""Real-time personalization through the REST API, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from engine.runtime import Runtime

NEUTRAL = "a great place for a holiday"


def search(client: Any, **params: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json=params)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["results"]]


def categories(body: dict[str, Any]) -> Counter[str]:
    return Counter(r["category"] for r in body["results"])


def items_of(client: Any, category: str, n: int) -> list[str]:
    body = search(client, q=f"{category} destination", k=50, category=category)
    return ids(body)[:n]


def post_events(client: Any, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def test_clicks_move_that_category_up_at_once(client: Any, built: Runtime) -> None:
    before = search(client, q=NEUTRAL, user_id="u1", k=10)
    mountains = items_of(client, "mountain", 6)
    post_events(client, [{"user_id": "u1", "item_id": i, "type": "click"} for i in mountains])
    after = search(client, q=NEUTRAL, user_id="u1", k=10)
    assert categories(after)["mountain"] > categories(before)["mountain"]
    assert categories(after)["mountain"] >= 5
    # Someone else sees the clicks only through the items' popularity, not as taste.
    other = search(client, q=NEUTRAL, user_id="someone-else", k=10)
    assert categories(other)["mountain"] < categories(after)["mountain"]


def test_two_histories_two_rankings(client: Any, built: Runtime) -> None:
    beaches, deserts = items_of(client, "beach", 5), items_of(client, "desert", 5)
    post_events(client, [{"user_id": "sun", "item_id": i, "type": "click"} for i in beaches])
    post_events(client, [{"user_id": "sand", "item_id": i, "type": "click"} for i in deserts])
    sun = search(client, q=NEUTRAL, user_id="sun", k=10)
    sand = search(client, q=NEUTRAL, user_id="sand", k=10)
    assert ids(sun) != ids(sand)
    assert categories(sun)["beach"] + categories(sun)["island"] > categories(sand)["beach"]
    assert categories(sand)["desert"] > categories(sun)["desert"]


def test_purchased_items_are_not_recommended_again(client: Any, built: Runtime) -> None:
    first = ids(search(client, q="Eiffel Tower and the Louvre", user_id="buyer", k=5))[0]
    assert first == "paris-france"
    post_events(client, [{"user_id": "buyer", "item_id": first, "type": "purchase"}])
    assert first not in ids(search(client, q="Eiffel Tower and the Louvre", user_id="buyer", k=5))
    assert first not in ids(search(client, user_id="buyer", k=50))
    kept = search(client, q="Eiffel Tower", user_id="buyer", k=5, exclude_seen=False)
    assert first in ids(kept)


def test_exclude_all_seen(client: Any, built: Runtime) -> None:
    viewed = items_of(client, "island", 3)
    post_events(client, [{"user_id": "v", "item_id": i, "type": "view"} for i in viewed])
    body = search(client, q="island", user_id="v", k=20, exclude_seen="all")
    assert not set(viewed) & set(ids(body))


def test_read_your_writes_and_profile(client: Any, built: Runtime) -> None:
    assert client.get("/v1/users/fresh").status_code == 404
    post_events(
        client,
        [
            {"user_id": "fresh", "item_id": "tokyo-japan", "type": "view", "ts": 1_789_900_000},
            {
                "user_id": "fresh",
                "item_id": "kyoto-japan",
                "type": "click",
                "ts": "2026-09-21T10:00:00Z",
            },
            {
                "user_id": "fresh",
                "item_id": "kyoto-japan",
                "type": "rating",
                "value": 5,
                "ts": "2026-09-22T10:00:00+02:00",
            },
        ],
    )
    profile = client.get("/v1/users/fresh").get_json()
    assert profile["event_count"] == 3
    assert profile["counts"] == {"view": 1, "click": 1, "rating": 1}
    assert profile["top_categories"][0]["name"] == "culture"
    assert [r["item_id"] for r in profile["recent_items"]] == [
        "kyoto-japan",
        "kyoto-japan",
        "tokyo-japan",
    ]
    assert profile["recent_items"][0]["ts"] == "2026-09-22T08:00:00Z"
    assert profile["last_activity"] == "2026-09-22T08:00:00Z" and profile["has_vector"]


def test_repeated_event_id_counts_once(client: Any, built: Runtime) -> None:
    event = {"user_id": "r", "item_id": "tokyo-japan", "type": "click", "event_id": "e-1"}
    assert post_events(client, [event, event])["recorded"] == 1
    again = post_events(client, [event])
    assert again["recorded"] == 0 and again["duplicates"] == 1
    assert client.get("/v1/users/r").get_json()["event_count"] == 1


@pytest.mark.parametrize(
    ("event", "field", "fragment"),
    [
        (
            {"user_id": "u", "item_id": "no-such-place", "type": "click"},
            "events[1].item_id",
            "unknown item 'no-such-place'",
        ),
        (
            {"user_id": "u", "item_id": "tokyo-japan", "type": "like"},
            "events[1].type",
            "unknown event type 'like'",
        ),
        (
            {"user_id": "u", "item_id": "tokyo-japan", "type": "view", "ts": "last tuesday"},
            "events[1].ts",
            "ISO 8601",
        ),
        (
            {"user_id": "u", "item_id": "tokyo-japan", "type": "view", "ts": 1_790_000_000_000},
            "events[1].ts",
            "milliseconds",
        ),
        (
            {"user_id": "u", "item_id": "tokyo-japan", "type": "rating"},
            "events[1].value",
            "required for a rating",
        ),
        ({"item_id": "tokyo-japan", "type": "view"}, "events[1].user_id", "required"),
    ],
)
def test_bad_events_are_422_and_write_nothing(
    client: Any, built: Runtime, event: dict[str, Any], field: str, fragment: str
) -> None:
    good = {"user_id": "u", "item_id": "tokyo-japan", "type": "view"}
    response = client.post("/v1/events", json={"events": [good, event]})
    assert response.status_code == 422
    problems = response.get_json()["problems"]
    assert [p["field"] for p in problems] == [field] and fragment in problems[0]["message"]
    assert client.get("/v1/users/u").status_code == 404


def test_batch_limit_and_single_event_form(client: Any, built: Runtime, app: Any) -> None:
    one = {"user_id": "s", "item_id": "tokyo-japan", "type": "view"}
    assert client.post("/v1/events", json=one).get_json()["recorded"] == 1
    too_many = client.post("/v1/events", json={"events": [one] * 1001})
    assert too_many.status_code == 413 and "limit is 1000" in too_many.get_json()["message"]


def test_cold_start_and_popular_items(client: Any, built: Runtime) -> None:
    anonymous = search(client, q="ski resort", k=5)
    stranger = search(client, q="ski resort", user_id="never-seen", k=5)
    assert ids(stranger) == ids(anonymous) and stranger["mode"] == "search"
    empty = search(client, user_id="never-seen", k=5)
    assert empty["mode"] == "popular" and len(empty["results"]) == 5
    hits = ["cusco-peru"] * 3 + ["tokyo-japan"] * 2 + ["marrakech-morocco"]
    post_events(
        client, [{"user_id": f"p{n}", "item_id": i, "type": "purchase"} for n, i in enumerate(hits)]
    )
    popular = search(client, user_id="never-seen", k=3)
    assert ids(popular) == ["cusco-peru", "tokyo-japan", "marrakech-morocco"]
    desert_only = search(client, k=3, category="desert")
    assert {r["category"] for r in desert_only["results"]} == {"desert"}


def test_session_context_recommends_similar_items(client: Any, built: Runtime) -> None:
    deserts = items_of(client, "desert", 3)
    body = search(client, context_items=deserts, k=10)
    assert body["mode"] == "recommend"
    assert not set(deserts) & set(ids(body))
    assert categories(body)["desert"] >= 6
    via_get = client.get("/v1/search", query_string={"context_items": ",".join(deserts), "k": 10})
    assert ids(via_get.get_json()) == ids(body)


def test_explanations_sum_to_the_logit(client: Any, built: Runtime) -> None:
    post_events(client, [{"user_id": "x", "item_id": "kyoto-japan", "type": "click"}])
    body = search(client, q="temples", user_id="x", k=5, explain=True)
    for result in body["results"]:
        e = result["explanation"]
        assert abs(sum(e["contributions"].values()) + e["bias"] - e["logit"]) < 1e-9
        assert set(e["features"]) == set(e["contributions"])
    assert "explanation" not in search(client, q="temples", k=1)["results"][0]
