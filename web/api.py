"""The /v1 REST API and the health probes: parse, call one engine function, serialize."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from werkzeug.exceptions import BadRequest

from engine.catalog.items import (
    ItemIn,
    delete_items,
    get_item,
    parse_items_payload,
    upsert_items,
)
from engine.catalog.schemas import ItemDeleted, ItemOut, ItemsBody, ItemsWritten
from engine.core.clock import utcnow
from engine.core.contract import check_id
from engine.core.errors import InvalidInput, NotFound, TooLarge
from engine.encoder.embedder import describe_encoder
from engine.search.request import SearchQuery, SimilarQuery
from engine.search.response import SearchOut
from engine.store.outage import RETRY_AFTER_S
from engine.users.events import EventBody, parse_events_payload
from engine.users.profile import user_profile
from engine.users.recording import record_events
from engine.users.schemas import EventsBody, EventsRecorded, UserProfile
from web.auth import require_key
from web.contract import body, json_payload, operation, query, respond
from web.extensions import runtime_of, workers_of
from web.metrics import observe_events, observe_rejected_events, observe_search
from web.schemas import Health, Ready

bp = Blueprint("api", __name__, url_prefix="/v1")
MAX_ITEMS_DOCUMENTED = 1_000  # RECSEARCH_MAX_BATCH_ITEMS by default
health = Blueprint("health", __name__)

_SEARCH = {
    "tag": "search",
    "access": "key-or-open",
    "responses": {200: SearchOut},
    "description": "Open without a key when served on loopback (RECSEARCH_OPEN_ENDPOINTS).",
}


@bp.get("/search")
@operation(summary="Search or recommend", query=SearchQuery, **_SEARCH)
def search_get() -> ResponseReturnValue:
    require_key("search")
    return _search(query(SearchQuery, lists=SearchQuery.LISTS))


@bp.post("/search")
@operation(summary="Search or recommend (JSON body)", body=SearchQuery, **_SEARCH)
def search_post() -> ResponseReturnValue:
    require_key("search")
    return _search(body(SearchQuery))


def _search(search: SearchQuery) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    response = runtime.search(search.to_request())
    observe_search(runtime, response)
    return respond(response)


def _items_schema(ref: Any) -> dict[str, Any]:
    item = ref(ItemIn)
    array = {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_ITEMS_DOCUMENTED}
    return {"oneOf": [item, array, ref(ItemsBody)]}


@bp.post("/items")
@operation(
    summary="Insert or update items (one, an array, or {items: [...]}; all or nothing)",
    tag="items",
    body_schema=_items_schema,
    responses={200: ItemsWritten, 201: ItemsWritten},
)
def items_post() -> ResponseReturnValue:
    require_key()
    runtime = runtime_of(current_app)
    items = parse_items_payload(json_payload(), runtime.settings.max_batch_items)
    with runtime.write_session() as session:
        counts = upsert_items(session, items)
    runtime.vectors.forget(item.id for item in items)
    written = ItemsWritten(
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        ids=[item.id for item in items],
        note="stored; searchable within a second, folded into the next build",
    )
    return respond(written, 201 if counts.inserted else 200)


@bp.get("/items/<path:item_id>")
@operation(summary="One item", tag="items", access="key-or-open", responses={200: ItemOut})
def item_get(item_id: str) -> ResponseReturnValue:
    require_key("search")
    item_id = check_id(item_id, "item_id")
    with runtime_of(current_app).session() as session:
        return respond(ItemOut.of(get_item(session, item_id)))


@bp.get("/items/<path:item_id>/similar")
@operation(summary="Items similar to an item", query=SimilarQuery, **_SEARCH)
def item_similar(item_id: str) -> ResponseReturnValue:
    require_key("search")
    item_id = check_id(item_id, "item_id")
    similar = query(SimilarQuery)
    runtime = runtime_of(current_app)
    response = runtime.search(similar.to_request(item_id))
    observe_search(runtime, response)
    return respond(response)


@bp.delete("/items/<path:item_id>")
@operation(summary="Delete an item", tag="items", responses={200: ItemDeleted})
def item_delete(item_id: str) -> ResponseReturnValue:
    require_key()
    item_id = check_id(item_id, "item_id")
    with runtime_of(current_app).write_session() as session:
        if delete_items(session, [item_id]):
            raise NotFound(f"item {item_id!r}")
    return respond(ItemDeleted(deleted=item_id))


def _events_schema(ref: Any) -> dict[str, Any]:
    return {"oneOf": [ref(EventBody), ref(EventsBody)]}


@bp.post("/events")
@operation(
    summary="Record events; the users' features are updated before the answer",
    tag="events",
    access="key-or-open",
    body_schema=_events_schema,
    responses={200: EventsRecorded},
)
def events_post() -> ResponseReturnValue:
    """Record events and update the users' features before answering (read-your-writes)."""
    require_key("events")
    runtime = runtime_of(current_app)
    settings = runtime.settings
    payload: object = None
    try:  # events refused for breaking the contract are counted, then refused as usual
        payload = json_payload()
        events = parse_events_payload(
            payload, settings.max_events_batch, utcnow(), settings.max_clock_skew_s
        )
        with runtime.write_session(users={e.user_id for e in events}) as session:
            report = record_events(session, events, settings, runtime.vectors)
    except (InvalidInput, TooLarge, BadRequest):
        observe_rejected_events(payload)
        raise
    observe_events(report)
    return respond(
        EventsRecorded(
            received=report.received,
            recorded=report.recorded,
            duplicates=report.duplicates,
            users=report.users,
        )
    )


@bp.get("/users/<path:user_id>")
@operation(summary="A user's features", tag="users", responses={200: UserProfile})
def user_get(user_id: str) -> ResponseReturnValue:
    require_key()
    user_id = check_id(user_id, "user_id")
    runtime = runtime_of(current_app)
    with runtime.session() as session:
        return respond(user_profile(session, user_id, runtime.settings))


@health.get("/healthz")
@operation(summary="Liveness", tag="health", access="public", responses={200: Health})
def healthz() -> ResponseReturnValue:
    return respond(Health(status="ok"))


@health.get("/readyz")
@operation(
    summary="Readiness: the database answers, an index is published, every worker has loaded",
    tag="health",
    access="public",
    responses={200: Ready, 503: Ready},
)
def readyz() -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    try:
        with runtime.db.connect() as connection:
            connection.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # report, do not crash: this is the probe
        database = f"unreachable: {type(exc).__name__}"
    store = runtime.live.store
    version = store.current_version() if database == "ok" else None
    readiness = workers_of(current_app)
    loaded, workers = readiness.loaded_of() if readiness is not None else (1, 1)
    ready = database == "ok" and version is not None and loaded >= workers
    disk = disk_state(runtime.settings.data_dir)
    answer = Ready(
        status=("ready" if disk == "ok" else "degraded") if ready else "not_ready",
        database=database,
        disk=disk,
        index_version=version,
        # a differing encoder serves anyway: its vectors agree with torch's
        encoder=describe_encoder(runtime.embedder.encoder, store.manifest(version))
        if version is not None
        else None,
        index="no index published: run `recsearch build`"
        if version is None and database == "ok"
        else None,
        workers=f"{min(loaded, workers)} of {workers} loaded" if readiness is not None else None,
    )
    response = respond(answer, 200 if ready else 503)
    if not ready:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


# Less free space than this in the data dir is a full disk: SQLite's next page, a job's
# progress, an index file all fail to be written.
DISK_FULL_BELOW_BYTES = 1 << 20


def disk_state(data_dir: Path) -> str:
    """ "ok", or "full: ..." naming the data dir and what is left."""
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        return f"unknown: {exc}"
    if free >= DISK_FULL_BELOW_BYTES:
        return "ok"
    return f"full: {free} bytes free in {data_dir}; writes there fail until space is freed"
