"""The typed contract against hostile input (issue 8, items 1–5 and 14), the OpenAPI
document, and the one search serializer; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.runtime import Runtime
from tests.conftest import write_jsonl
from web.cli import Context, cli

JSON_ENDPOINTS = [
    "/v1/search",
    "/v1/items",
    "/v1/events",
    "/admin/api/rebuild",
    "/admin/api/train",
    "/admin/api/rollback",
    "/admin/api/promote",
]
NEAR_LIMITS = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


def problem_fields(response: Any, status: int = 422) -> list[str]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "invalid_input" and body["message"], body
    return [p["field"] for p in body["problems"]]


def event(**fields: Any) -> dict[str, Any]:
    return {"user_id": "u", "item_id": "tokyo-japan", "type": "click", **fields}


def item(**fields: Any) -> dict[str, Any]:
    return {"id": "new-item", "title": "A new place", **fields}


# 1. Deeply nested JSON was a RecursionError (500).
@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_deeply_nested_json_is_400(client: Any, built: Runtime, path: str) -> None:
    response = client.post(path, data="[" * 2000 + "]" * 2000, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "nested too deeply" in response.get_json()["message"]


# 2. An unhashable exclude_seen was a TypeError (500).
@pytest.mark.parametrize("value", [[], {}, [1], {"a": 1}])
def test_unhashable_exclude_seen_is_422(client: Any, built: Runtime, value: object) -> None:
    response = client.post("/v1/search", json={"q": "beach", "exclude_seen": value})
    assert problem_fields(response) == ["exclude_seen"]


# 3. Timestamps near the date limits with an offset were an OverflowError (500).
@pytest.mark.parametrize("ts", NEAR_LIMITS)
def test_timestamps_at_the_limits_are_422(client: Any, built: Runtime, ts: str) -> None:
    assert problem_fields(client.post("/v1/events", json=event(ts=ts))) == ["ts"]
    batch = {"events": [event(), event(ts=ts)]}
    assert problem_fields(client.post("/v1/events", json=batch)) == ["events[1].ts"]
    assert problem_fields(client.post("/v1/items", json=item(created_at=ts))) == ["created_at"]


@pytest.mark.parametrize("skip", [False, True])
def test_ingest_and_events_name_the_line_of_a_bad_timestamp(
    built: Runtime, tmp_path: Path, skip: bool
) -> None:
    context = Context(built.settings, quiet=True, runtime=built)
    flags = ["--skip-invalid", "--rejects", str(tmp_path / "rejects.jsonl")] if skip else []
    catalog = write_jsonl(
        tmp_path / "c.jsonl",
        [
            item(id="ok-item"),
            item(id="bad-1", created_at=NEAR_LIMITS[0]),
            item(id="bad-2", created_at=NEAR_LIMITS[1]),
        ],
    )
    result = CliRunner().invoke(cli, ["ingest", str(catalog), *flags], obj=context)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert f"{catalog}:2: created_at:" in result.output
    assert f"{catalog}:3: created_at:" in result.output
    events = write_jsonl(tmp_path / "e.jsonl", [event(event_id="e1"), event(ts=NEAR_LIMITS[1])])
    result = CliRunner().invoke(cli, ["events", str(events), *flags], obj=context)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert f"{events}:2: ts:" in result.output
    assert (result.exit_code == 0) == skip


# 4. Lone surrogates anywhere, NUL in ids, and a request_id longer than its column.
SURROGATE = "bad\udfffvalue"


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/search", {"q": SURROGATE}, "q"),
        ("/v1/search", {"user_id": SURROGATE}, "user_id"),
        ("/v1/search", {"category": SURROGATE}, "category"),
        ("/v1/search", {"q": "x", "context_items": [SURROGATE]}, "context_items[0]"),
        ("/v1/events", event(user_id=SURROGATE), "user_id"),
        ("/v1/events", event(item_id=SURROGATE), "item_id"),
        ("/v1/events", event(event_id=SURROGATE), "event_id"),
        ("/v1/events", event(ts=SURROGATE), "ts"),
        ("/v1/events", event(event_id="a\u0000b"), "event_id"),
        ("/v1/events", event(request_id="r" * 100), "request_id"),
        ("/v1/events", event(request_id="r\u0000"), "request_id"),
        ("/v1/items", item(id=SURROGATE), "id"),
        ("/v1/items", item(title=SURROGATE), "title"),
        ("/v1/items", item(text="a\u0000b"), "text"),
        ("/v1/items", item(category=SURROGATE), "category"),
        ("/v1/items", item(tags=["ok", SURROGATE]), "tags[1]"),
        ("/v1/items", item(attributes={"k": SURROGATE}), "attributes.k"),
        ("/v1/items", item(attributes={"n": 10**30}), "attributes.n"),
    ],
)
def test_unstorable_strings_are_422_naming_the_field(
    client: Any, built: Runtime, path: str, payload: dict[str, Any], field: str
) -> None:
    data = json.dumps(payload)  # ASCII-escaped: "\udfff" arrives as a lone surrogate
    response = client.post(path, data=data, content_type="application/json")
    assert problem_fields(response) == [field]
    with built.session() as session:  # nothing half-written
        from engine.store.models import Event, Item

        assert session.get(Item, "new-item") is None
        assert session.query(Event).count() == 0


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/items/a%00b", "item_id"),
        ("/v1/users/a%00b", "user_id"),
        ("/v1/search?user_id=a%00b", "user_id"),
        ("/v1/search?q=a%00b", "q"),
        ("/v1/items/" + "x" * 300, "item_id"),
    ],
)
def test_nul_and_overlong_ids_in_urls_are_422(
    client: Any, built: Runtime, url: str, field: str
) -> None:
    assert problem_fields(client.get(url)) == [field]


def test_nul_id_delete_is_422(client: Any, built: Runtime) -> None:
    assert problem_fields(client.delete("/v1/items/a%00b")) == ["item_id"]


# 5 (part). A 300-character version was an OSError (500).
@pytest.mark.parametrize("path", ["/admin/api/rollback", "/admin/api/promote"])
@pytest.mark.parametrize("version", ["v" * 300, "../indexes/v000001", "/etc", "v1\u0000", 7])
def test_versions_must_be_well_formed(
    client: Any, built: Runtime, path: str, version: object
) -> None:
    current = built.live.store.current_version()
    assert problem_fields(client.post(path, json={"version": version})) == ["version"]
    assert built.live.store.current_version() == current


# 14. A future timestamp froze the user's features at that date.
def test_future_events_are_refused_and_do_not_freeze_the_user(client: Any, built: Runtime) -> None:
    far = client.post("/v1/events", json=event(ts="9999-01-01T00:00:00Z", event_id="f1"))
    assert problem_fields(far) == ["ts"]
    assert "RECSEARCH_MAX_CLOCK_SKEW_S" in far.get_json()["message"]
    assert client.post("/v1/events", json=event(ts=4_000_000_000)).status_code == 422
    ok = client.post("/v1/events", json=event(event_id="now-1"))
    assert ok.status_code == 200 and ok.get_json()["recorded"] == 1
    later = client.post("/v1/events", json=event(item_id="kyoto-japan", event_id="now-2"))
    assert later.get_json()["recorded"] == 1
    profile = client.get("/v1/users/u").get_json()
    assert profile["event_count"] == 2
    assert {r["item_id"] for r in profile["recent_items"]} == {"tokyo-japan", "kyoto-japan"}


def test_clock_skew_is_configurable(built: Runtime) -> None:
    from datetime import timedelta

    from engine.core.clock import utcnow
    from engine.core.errors import InvalidInput
    from engine.users.events import validate_event

    now = utcnow()
    soon = (now + timedelta(seconds=60)).isoformat()
    assert validate_event(event(ts=soon), now=now).ts.isoformat() == soon
    with pytest.raises(InvalidInput, match="more than 30 s in the future"):
        validate_event(event(ts=soon), now=now, max_skew_s=30)


# OpenAPI: every public route, with request and response schemas.
def test_openapi_lists_every_route_with_schemas(app: Any, client: Any) -> None:
    from web.openapi import spec

    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document == json.loads(json.dumps(spec(app)))
    assert document["openapi"].startswith("3.1")
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if not rule.endpoint.endswith("static")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    import re

    for path, method in routes:
        openapi_path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
        assert openapi_path in document["paths"], path
        op = document["paths"][openapi_path][method.lower()]
        assert op["responses"], (path, method)
        for status, response_spec in op["responses"].items():
            assert "description" in response_spec, (path, method, status)
        # Actions on one job or experiment take no body.
        no_body = path.endswith(("/cancel", "/stop", "<int:experiment_id>/promote"))
        takes_json = path.startswith(("/v1/", "/admin/api/")) and not no_body
        if method == "POST" and takes_json:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema, path
    search = document["paths"]["/v1/search"]["post"]
    ok = search["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/SearchOut"}
    assert {"SearchQuery", "SearchOut", "ItemIn", "EventBody", "ErrorBody", "Job"} <= set(
        document["components"]["schemas"]
    )
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"/openapi.json" in docs.data
    assert b'src="http' not in docs.data and b'href="http' not in docs.data  # no CDN


# One serializer for the API, the playground and the CLI.
def test_search_json_is_the_same_everywhere(client: Any, built: Runtime) -> None:
    from engine.search.response import SearchOut

    api = client.get("/v1/search?q=beach&k=3&explain=true").get_json()
    playground = client.get("/admin/api/search?q=beach&k=3").get_json()
    context = Context(built.settings, quiet=True, runtime=built)
    result = CliRunner().invoke(
        cli, ["search", "beach", "-k", "3", "--json", "--explain"], obj=context
    )
    cli_json = json.loads(result.output)
    for body in (api, playground, cli_json):
        SearchOut.model_validate(body)
        assert set(body) == {
            "results",
            "index_version",
            "took_ms",
            "mode",
            "request_id",
            "next_offset",
            "total",
            "total_relation",
            "timings_ms",
        }
        assert len(body["request_id"]) == 32
        assert [r["id"] for r in body["results"]] == [r["id"] for r in api["results"]]
        assert all("explanation" in r for r in body["results"])
    plain = client.get("/v1/search?q=beach&k=3").get_json()
    assert set(plain) == {
        "results",
        "index_version",
        "took_ms",
        "mode",
        "request_id",
        "next_offset",
        "total",
        "total_relation",
    }
    assert all("explanation" not in r for r in plain["results"])


def test_integers_longer_than_python_reads_are_422_naming_where(
    client: Any, built: Runtime
) -> None:
    # Past int_max_str_digits (4,300) json.loads refuses the body; the error says where.
    huge = "9" * 5_000
    body = json.dumps({"events": [event(value=1), event(value=0, ts=0)]})
    body = body.replace('"value": 0', f'"value": {huge}').replace('"ts": 0', f'"ts": -{huge}')
    response = client.post("/v1/events", data=body, content_type="application/json")
    assert problem_fields(response) == ["events[1].ts", "events[1].value"]
    messages = {p["message"] for p in response.get_json()["problems"]}
    assert messages == {"is an integer of 5,000 digits, beyond every limit of the API"}
    # With NaN as well, the body is not JSON: a 400, as before.
    response = client.post(
        "/v1/search", data=f'{{"k": NaN, "offset": {huge}}}', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"


def test_errors_show_a_huge_number_cut_to_a_readable_length(client: Any, built: Runtime) -> None:
    for body, field in [
        ({"q": "x", "k": 10**400}, "k"),
        ({"q": "x", "offset": -(10**400)}, "offset"),
        (
            {"q": "x", "filters": {"avg_daily_cost_usd": {"gte": 10**400}}},
            "filters.avg_daily_cost_usd",
        ),
    ]:
        response = client.post("/v1/search", json=body)
        assert problem_fields(response) == [field]
        message = response.get_json()["problems"][0]["message"]
        assert "… (40" in message and len(message) < 120, message
    response = client.post("/v1/events", json=event(ts=10**400))  # OverflowError once: a 500
    assert problem_fields(response) == ["ts"]
