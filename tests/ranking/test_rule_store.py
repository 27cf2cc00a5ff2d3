"""Merchandising rules through the admin API: stored, listed, deleted, checked against the
catalog with errors naming the field; and what they do to searches."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime import Runtime


def _add(client: Any, rule: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/admin/api/rules", json=rule)
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def test_rules_are_stored_listed_and_deleted(client: Any, built: Runtime) -> None:
    pin = _add(
        client,
        {"action": "pin", "item_id": "paris-france", "position": 1, "query": "  Beach   Holidays "},
    )
    assert pin["query"] == "beach holidays" and pin["weight"] is None
    boost = _add(
        client,
        {
            "action": "boost",
            "where": {"country": "Japan"},
            "weight": 3,
            "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2027-01-01T00:00:00Z",
        },
    )
    assert boost["starts_at"] == "2026-01-01T00:00:00Z"
    listed = client.get("/admin/api/rules").get_json()["rules"]
    assert [r["id"] for r in listed] == [pin["id"], boost["id"]]
    assert client.delete(f"/admin/api/rules/{pin['id']}").get_json() == {"deleted": pin["id"]}
    assert client.delete(f"/admin/api/rules/{pin['id']}").status_code == 404
    assert [r["id"] for r in client.get("/admin/api/rules").get_json()["rules"]] == [boost["id"]]


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        ({"action": "boost", "where": {"colour": "red"}}, "where.colour", "unknown field"),
        ({"action": "boost", "where": {"country": 3}}, "where.country", "holds text"),
        ({"action": "pin", "item_id": "paris-france"}, "position", "a pin needs a position"),
        ({"action": "hide"}, "where", "exactly one of item_id and where"),
        ({"action": "pin", "where": {"country": "Japan"}, "position": 1}, "where", "give item_id"),
        ({"action": "hide", "item_id": "a", "weight": 2}, "weight", "weight applies to boost"),
        ({"action": "bury", "item_id": "a", "weight": 0}, "weight", "greater than 0"),
        ({"action": "shove", "item_id": "a"}, "action", "pin"),
        (
            {
                "action": "hide",
                "item_id": "a",
                "starts_at": "2027-01-01T00:00:00Z",
                "ends_at": "2026-01-01T00:00:00Z",
            },
            "ends_at",
            "must be after starts_at",
        ),
    ],
)
def test_bad_rules_are_422_naming_the_problem(
    client: Any, built: Runtime, rule: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/admin/api/rules", json=rule)
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert any(p["field"] == field and words in p["message"] for p in body["problems"]), body
    assert client.get("/admin/api/rules").get_json()["rules"] == []


def test_rules_need_the_admin_key(app: Any, built: Runtime) -> None:
    plain = app.test_client()
    assert plain.get("/admin/api/rules").status_code == 401
    assert (
        plain.post("/admin/api/rules", json={"action": "hide", "item_id": "x"}).status_code == 401
    )
