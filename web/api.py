"""The /v1 REST API and the health probes: parse, call one engine function, serialize."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from werkzeug.exceptions import BadRequest

from engine.catalog import (
    delete_items,
    get_item,
    item_to_dict,
    parse_items_payload,
    upsert_items,
    utcnow,
)
from engine.errors import InvalidInput, NotFound
from engine.events import parse_events_payload
from engine.search import SearchRequest
from engine.users import record_events, user_profile
from web import runtime_of
from web.admin import latency
from web.auth import require_key

bp = Blueprint("api", __name__, url_prefix="/v1")
health = Blueprint("health", __name__)


def _json_body() -> Any:
    """The parsed JSON body; a missing or malformed one is a 400, not a 500."""
    if not request.data:
        raise BadRequest("the request body is empty; send JSON")
    payload = request.get_json(silent=True)
    if payload is None:
        raise BadRequest("the request body is not valid JSON (Content-Type: application/json)")
    return payload


@bp.get("/search")
def search_get() -> ResponseReturnValue:
    require_key("search")
    raw: dict[str, Any] = dict(request.args)
    if "context_items" in request.args:  # repeated (?context_items=a&context_items=b) or a,b
        raw["context_items"] = ",".join(request.args.getlist("context_items"))
    return _search(raw)


@bp.post("/search")
def search_post() -> ResponseReturnValue:
    require_key("search")
    payload = _json_body()
    if not isinstance(payload, dict):
        raise InvalidInput("the search body must be a JSON object")
    return _search(payload)


def _search(raw: dict[str, Any]) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    search_request = SearchRequest.parse(raw, runtime.settings.max_k)
    with runtime.session() as session:
        response = runtime.searcher.search(session, search_request)
    latency().add(response.took_ms)
    results = []
    for hit in response.results:
        result = asdict(hit)
        if result["explanation"] is None:
            del result["explanation"]
        results.append(result)
    return jsonify(
        {
            "results": results,
            "index_version": response.index_version,
            "took_ms": response.took_ms,
            "mode": response.mode,
            "request_id": response.request_id,
        }
    )


@bp.post("/items")
def items_post() -> ResponseReturnValue:
    require_key()
    runtime = runtime_of(current_app)
    items = parse_items_payload(_json_body(), runtime.settings.max_batch_items)
    with runtime.write_session() as session:
        counts = upsert_items(session, items)
    runtime.vectors.forget(item.id for item in items)
    return jsonify(
        {
            "inserted": counts.inserted,
            "updated": counts.updated,
            "unchanged": counts.unchanged,
            "ids": [item.id for item in items],
            "note": "stored; searchable within a second, folded into the next build",
        }
    ), (201 if counts.inserted else 200)


@bp.get("/items/<path:item_id>")
def item_get(item_id: str) -> ResponseReturnValue:
    require_key("search")
    with runtime_of(current_app).session() as session:
        return jsonify(item_to_dict(get_item(session, item_id)))


@bp.delete("/items/<path:item_id>")
def item_delete(item_id: str) -> ResponseReturnValue:
    require_key()
    with runtime_of(current_app).write_session() as session:
        if delete_items(session, [item_id]):
            raise NotFound(f"item {item_id!r}")
    return jsonify({"deleted": item_id})


@bp.post("/events")
def events_post() -> ResponseReturnValue:
    """Record events and update the users' features before answering (read-your-writes)."""
    require_key("events")
    runtime = runtime_of(current_app)
    events = parse_events_payload(_json_body(), runtime.settings.max_events_batch, utcnow())
    with runtime.write_session() as session:
        report = record_events(session, events, runtime.settings, runtime.vectors)
    return jsonify(
        {
            "received": report.received,
            "recorded": report.recorded,
            "duplicates": report.duplicates,
            "users": report.users,
        }
    )


@bp.get("/users/<path:user_id>")
def user_get(user_id: str) -> ResponseReturnValue:
    require_key()
    runtime = runtime_of(current_app)
    with runtime.session() as session:
        return jsonify(user_profile(session, user_id, runtime.settings))


@health.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    checks: dict[str, Any] = {}
    try:
        with runtime.db.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report, do not crash: this is the probe
        checks["database"] = f"unreachable: {type(exc).__name__}"
    version = runtime.searcher.store.current_version() if checks["database"] == "ok" else None
    checks["index_version"] = version
    if version is None and checks["database"] == "ok":
        checks["index"] = "no index published: run `recsearch build`"
    ready = checks["database"] == "ok" and version is not None
    body = {"status": "ready" if ready else "not_ready", **checks}
    return jsonify(body), (200 if ready else 503)
