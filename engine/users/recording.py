"""Recording events: user features and item statistics updated incrementally, in the
transaction that stores the events."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.core.errors import InvalidInput, Problem
from engine.index.vectors import ItemVectors
from engine.store import sql_bulk
from engine.store.models import Covisit, Event, Item, ItemStats, UserFeatures
from engine.users import covisit, taste
from engine.users.decay import rebase
from engine.users.events import EventIn
from engine.users.profile import UserState, event_weight

_DEFAULTS: dict[str, dict[str, Any]] = {
    "user_features": {
        "event_count": 0,
        "counts": {},
        "vector_weight": 0.0,
        "category_affinity": {},
        "tag_affinity": {},
        "recent": [],
        "purchased": [],
    },
    "item_stats": {"popularity": 0.0, "counts": {}},
}


@dataclass
class EventReport:
    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    users: int = 0

    def add(self, other: EventReport) -> None:
        self.received += other.received
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.users += other.users


def unknown_items(session: Session, item_ids: Iterable[str]) -> set[str]:
    ids = set(item_ids)
    return ids - set(_item_meta(session, ids))


def _item_meta(session: Session, ids: set[str]) -> dict[str, tuple[str | None, list[str]]]:
    """Category and tags of the items that exist, by id."""
    if not ids:
        return {}
    query = select(Item.id, Item.category, Item.tags).where(Item.id.in_(list(ids)))
    return {row.id: (row.category, list(row.tags or [])) for row in session.execute(query)}


def record_events(
    session: Session, events: Sequence[EventIn], settings: Settings, vectors: ItemVectors
) -> EventReport:
    """Store events and fold the new ones into their users' features and items' statistics.

    Runs in the caller's transaction (open it with engine.store.db.WRITE_INTENT): commit it and
    the next search sees the update. Events whose event_id was already stored, or that
    repeat an event_id earlier in the batch, are skipped.
    Raises InvalidInput naming each event whose item does not exist; nothing is written then.

    A batch costs a fixed number of statements, whatever its size (engine.store.sql_bulk): the
    items, the events, then for users and for items one insert of missing rows, one locked
    read and one update, and one upsert of all co-visit pairs.
    """
    report = EventReport(received=len(events))
    if not events:
        return report
    items = _item_meta(session, {e.item_id for e in events})
    if len(items) < len({e.item_id for e in events}):
        problems = [
            Problem(f"events[{i}].item_id", f"unknown item {e.item_id!r}")
            for i, e in enumerate(events)
            if e.item_id not in items
        ]
        raise InvalidInput("; ".join(str(p) for p in problems[:20]), problems)

    new = _insert_new(session, events)
    report.recorded = len(new)
    report.duplicates = len(events) - len(new)
    if not new:
        return report

    weights = settings.type_weights()
    weight_of = {id(e): event_weight(e, settings, weights) for e in new}
    space, vector_of = vectors.lookup(session, {e.item_id for e in new if weight_of[id(e)] != 0.0})
    half_life_s = settings.half_life_s

    by_user: dict[str, list[EventIn]] = defaultdict(list)
    for event in new:
        by_user[event.user_id].append(event)
    report.users = len(by_user)
    # Lock order, users then items then co-visit pairs, each sorted, so concurrent batches
    # cannot deadlock.
    pairs: Counter[tuple[str, str]] = Counter()
    users = []
    stale: dict[str, UserState] = {}  # users whose taste vector lies in another encoder's space
    now = utcnow()
    for row in _locked_rows(session, UserFeatures, "user_id", sorted(by_user)):
        state = UserState.from_row(row)
        if taste.stale(row, space):
            stale[row.user_id] = state
        else:
            state.encoder = space
        for event in by_user[row.user_id]:
            if weight_of[id(event)] > 0 and settings.covisit_window > 0:
                others = covisit.partners(state.recent, event, settings.covisit_window)
                covisit.add_pairs(pairs, event.item_id, others)
            category, tags = items[event.item_id]
            state.apply(
                event,
                weight_of[id(event)],
                category,
                tags,
                vector_of.get(event.item_id),
                half_life_s,
                settings.recent_items,
            )
        users.append(state)
    if stale:  # summed again from the log, the events just stored included
        found, tastes = taste.reencode(
            session, settings, vectors, {user: s.ref_ts for user, s in stale.items()}
        )
        for user, state in stale.items():
            state.vector, state.vector_weight = tastes[user]
            state.encoder = found
    sql_bulk.update_rows(session, UserFeatures, "user_id", [s.values(now) for s in users])

    by_item: dict[str, list[EventIn]] = defaultdict(list)
    for event in new:
        by_item[event.item_id].append(event)
    stats = [
        _item_stats(row, by_item[row.item_id], weight_of, half_life_s, now)
        for row in _locked_rows(session, ItemStats, "item_id", sorted(by_item))
    ]
    sql_bulk.update_rows(session, ItemStats, "item_id", stats)
    covisit.write_pairs(session, pairs)
    _expire(session, (UserFeatures, ItemStats, Covisit))
    return report


def _insert_new(session: Session, events: Sequence[EventIn]) -> list[EventIn]:
    """Insert the events; return those not already stored (by event_id) in input order.

    One statement for the batch: an event_id repeated within it is sent once (its first
    occurrence), and the database's unique event_id skips those stored before.
    """
    now = utcnow()
    seen: set[str] = set()
    first: list[EventIn] = []  # by position: a caller may pass the same object twice
    for event in events:
        if event.event_id is not None:
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
        first.append(event)
    rows = [
        {
            "event_id": e.event_id,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "type": e.type,
            "value": e.value,
            "ts": e.ts,
            "request_id": e.request_id,
            "received_at": now,
        }
        for e in first
    ]
    inserted = set(sql_bulk.insert_new_keys(session, Event, "event_id", rows))
    return [e for e in first if e.event_id is None or e.event_id in inserted]


def _locked_rows(session: Session, model: Any, key: str, ids: list[str]) -> list[Any]:
    """The rows for ids, created if missing, locked FOR UPDATE (PostgreSQL) in id order.

    Creating first (insert, skip existing) then locking means two batches that both see a
    new user serialize on its row instead of both starting from an empty state.
    """
    if not ids:
        return []
    defaults = _DEFAULTS[model.__tablename__]
    sql_bulk.insert_missing(session, model, key, [{key: i, **defaults} for i in ids])
    return sql_bulk.select_for_update(session, model, key, ids)


def _item_stats(
    stats: Any,
    events: list[EventIn],
    weight_of: dict[int, float],
    half_life_s: float,
    now: datetime,
) -> dict[str, Any]:
    """The item_stats row after the events: decayed popularity and counts by type."""
    popularity = stats.popularity or 0.0
    ref = stats.ref_ts
    counts = dict(stats.counts or {})
    for event in events:
        ref, kept, age_factor = rebase(ref, event.ts, half_life_s)
        popularity = popularity * kept + max(weight_of[id(event)], 0.0) * age_factor
        counts[event.type] = counts.get(event.type, 0) + 1
    return {
        "item_id": stats.item_id,
        "popularity": popularity,
        "ref_ts": ref,
        "counts": counts,
        "updated_at": now,  # taken in the write transaction: settled_before bounds it
    }


def _expire(session: Session, models: tuple[type, ...]) -> None:
    """Expire loaded objects of the tables written with SQL behind the ORM's back, so a later
    read in the same session sees the new values."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, models):
            session.expire(obj)
