"""Batched event writes (engine.store.sql_bulk): same state as one event at a time, event_ids
counted once, a fixed number of statements per batch, no lost co-visit under concurrency."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session

from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.runtime import Runtime
from engine.store.models import Covisit, Event, Item, ItemStats, UserFeatures
from engine.users import covisit
from engine.users.decay import rebase
from engine.users.events import EventIn
from engine.users.profile import UserState, event_weight
from engine.users.recording import record_events

TYPES = ["impression", "view", "click", "cart", "purchase", "rating"]


def seeded_stream(item_ids: list[str], n: int, seed: int, users: int = 12) -> list[EventIn]:
    """Events of every type, out of time order, with microseconds, repeated event_ids (a
    client retrying), events without an id, a user with only impressions (no vector) and
    low ratings (negative weights)."""
    rng = random.Random(seed)
    t0 = utcnow().replace(microsecond=0) - timedelta(days=40)
    out: list[EventIn] = []
    for i in range(n):
        kind = rng.choices(TYPES, [20, 30, 25, 8, 7, 10])[0]
        user = f"u{rng.randrange(users)}"
        if user == "u0":
            kind = "impression"
        ts = t0 + timedelta(seconds=rng.randrange(30 * 86_400), microseconds=rng.randrange(10**6))
        value = float(rng.choice([0.5, 1, 2, 3, 4, 5])) if kind == "rating" else None
        event_id: str | None = f"s{seed}-{i}"
        if i % 9 == 0:
            event_id = None
        out.append(EventIn(user, rng.choice(item_ids), kind, ts, value, event_id))
        if i % 13 == 0 and out[-1].event_id is not None:
            out.append(out[rng.randrange(len(out))])  # a retry of an earlier event, any batch
    return out


class Reference:
    """The rules applied one event at a time in memory: users, popularity, co-visits."""

    def __init__(
        self, settings: Settings, meta: dict[str, tuple[str | None, list[str]]], vectors: Any
    ) -> None:
        self.settings, self.meta, self.vectors = settings, meta, vectors
        self.weights = settings.type_weights()
        self.users: dict[str, UserState] = {}
        self.popularity: dict[str, tuple[float, Any]] = {}
        self.covisits: Counter[tuple[str, str]] = Counter()

    def apply(self, e: EventIn) -> None:
        w = event_weight(e, self.settings, self.weights)
        state = self.users.setdefault(e.user_id, UserState(e.user_id))
        if w > 0:
            others = covisit.partners(state.recent, e, self.settings.covisit_window)
            covisit.add_pairs(self.covisits, e.item_id, others)
        category, tags = self.meta[e.item_id]
        vector = self.vectors.get(e.item_id) if w != 0 else None
        half_life_s = self.settings.half_life_s
        state.apply(e, w, category, tags, vector, half_life_s, self.settings.recent_items)
        value, ref = self.popularity.get(e.item_id, (0.0, None))
        ref, kept, age = rebase(ref, e.ts, half_life_s)
        self.popularity[e.item_id] = (value * kept + max(w, 0.0) * age, ref)


def first_occurrences(events: list[EventIn]) -> list[EventIn]:
    seen: set[str] = set()
    kept = []
    for e in events:
        if e.event_id is not None:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
        kept.append(e)
    return kept


def snapshot(runtime: Runtime) -> dict[str, Any]:
    with runtime.session() as session:
        return {
            "events": session.scalar(select(func.count()).select_from(Event)),
            "covisits": {(c.item_a, c.item_b): c.weight for c in session.scalars(select(Covisit))},
            "users": {
                r.user_id: UserState.from_row(r) for r in session.scalars(select(UserFeatures))
            },
            "stats": {
                s.item_id: (s.popularity, s.ref_ts, dict(s.counts))
                for s in session.scalars(select(ItemStats))
            },
        }


def wipe(runtime: Runtime) -> None:
    with runtime.write_session() as session:
        for model in (Event, UserFeatures, ItemStats, Covisit):
            session.execute(delete(model))


def record(runtime: Runtime, events: list[EventIn], batch: int) -> None:
    for start in range(0, len(events), batch):
        with runtime.write_session() as session:
            record_events(session, events[start : start + batch], runtime.settings, runtime.vectors)


def assert_same_user(a: UserState, b: UserState) -> None:
    assert (a.event_count, a.counts, a.recent, a.purchased) == (
        b.event_count,
        b.counts,
        b.recent,
        b.purchased,
    )
    assert (a.first_ts, a.last_ts, a.ref_ts) == (b.first_ts, b.last_ts, b.ref_ts)
    if a.vector is None or b.vector is None:
        assert a.vector is None and b.vector is None
    else:
        np.testing.assert_allclose(a.vector, b.vector, rtol=1e-12, atol=1e-15)
    assert a.vector_weight == b.vector_weight or abs(a.vector_weight - b.vector_weight) < 1e-12
    for mine, theirs in (
        (a.category_affinity, b.category_affinity),
        (a.tag_affinity, b.tag_affinity),
    ):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert abs(mine[key] - theirs[key]) < 1e-12


def item_ids(runtime: Runtime) -> list[str]:
    with runtime.session() as session:
        return sorted(session.scalars(select(Item.id)))


def test_batches_equal_one_event_at_a_time_and_the_replay(built: Runtime) -> None:
    """The oracle: batches (one statement per table) leave exactly the state that the
    per-event path leaves, and that the rules applied in memory compute (Reference)."""
    ids = item_ids(built)[:40]  # few items, so co-visits repeat and add up
    events = seeded_stream(ids, 360, seed=11)
    record(built, events, batch=97)
    batched = snapshot(built)
    wipe(built)
    record(built, events, batch=1)
    single = snapshot(built)

    kept = first_occurrences(events)
    assert batched["events"] == single["events"] == len(kept) < len(events)
    assert batched["covisits"] == single["covisits"] and batched["covisits"]
    assert batched["stats"].keys() == single["stats"].keys()
    for item, (pop, ref, counts) in batched["stats"].items():
        assert (ref, counts) == single["stats"][item][1:]
        assert abs(pop - single["stats"][item][0]) < 1e-12
    assert batched["users"].keys() == single["users"].keys()
    for user, state in batched["users"].items():
        assert_same_user(state, single["users"][user])
    assert batched["users"]["u0"].vector is None  # impressions only: no taste yet

    with built.session() as session:
        meta = {
            r.id: (r.category, list(r.tags or []))
            for r in session.execute(select(Item.id, Item.category, Item.tags))
        }
        vectors = built.vectors.get(session, ids)
    reference = Reference(built.settings, meta, vectors)
    for e in kept:
        reference.apply(e)
    for user, state in batched["users"].items():
        assert_same_user(state, reference.users[user])
    assert batched["covisits"] == dict(reference.covisits)
    for item, (pop, ref, _) in batched["stats"].items():
        assert abs(pop - reference.popularity[item][0]) < 1e-12
        assert ref == reference.popularity[item][1]


def test_an_event_id_counts_once_within_a_batch_and_across_batches(
    client: Any, built: Runtime
) -> None:
    t = (utcnow() - timedelta(hours=1)).isoformat() + "Z"
    a, b, c = item_ids(built)[:3]

    def ev(event_id: str | None, item: str, kind: str = "click") -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": "dup", "item_id": item, "type": kind, "ts": t}
        if event_id is not None:
            body["event_id"] = event_id
        return body

    first = [ev("e1", a), ev("e1", a), ev("e2", b), ev(None, c, "view"), ev(None, c, "view")]
    response = client.post("/v1/events", json={"events": first})
    assert response.status_code == 200
    assert response.get_json() == {"received": 5, "recorded": 4, "duplicates": 1, "users": 1}
    second = [ev("e2", b), ev("e1", a), ev("e3", c, "purchase"), ev("e3", c, "purchase")]
    response = client.post("/v1/events", json={"events": second})
    assert response.get_json() == {"received": 4, "recorded": 1, "duplicates": 3, "users": 1}
    again = client.post("/v1/events", json={"events": first + second}).get_json()
    assert again == {"received": 9, "recorded": 2, "duplicates": 7, "users": 1}  # no-id views

    state = snapshot(built)
    assert state["events"] == 7
    user = state["users"]["dup"]
    assert user.event_count == 7 and user.counts == {"click": 2, "view": 4, "purchase": 1}
    assert state["stats"][a][2] == {"click": 1} and state["stats"][b][2] == {"click": 1}
    assert state["stats"][c][2] == {"view": 4, "purchase": 1}


def count_statements(runtime: Runtime) -> tuple[list[int], Any]:
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    event.listen(runtime.db, "before_cursor_execute", count)
    return calls, count


def test_a_batch_costs_the_same_statements_whatever_its_size(built: Runtime) -> None:
    """A fixed number of round trips per batch (executemany counts once; on PostgreSQL
    each write is one statement): a per-row path would grow with the batch."""
    ids = item_ids(built)
    t = utcnow() - timedelta(days=1)

    def batch(n: int, tag: str) -> list[EventIn]:
        return [
            EventIn(
                f"{tag}-u{i}",
                ids[i % len(ids)],
                "click",
                t + timedelta(seconds=i),
                None,
                f"{tag}{i}",
            )
            for i in range(n)
        ]

    calls, listener = count_statements(built)
    try:
        counts = []
        for events in (batch(3, "small"), batch(400, "large"), batch(400, "large")):
            calls[0] = 0
            with built.write_session() as session:
                record_events(session, events, built.settings, built.vectors)
            counts.append(calls[0])
    finally:
        event.remove(built.db, "before_cursor_execute", listener)
    assert counts[0] == counts[1] <= 12  # the third batch is all duplicates: fewer still
    assert counts[2] < counts[1]


def test_concurrent_batches_sharing_items_lose_no_covisit(built: Runtime) -> None:
    """Writers with their own users and shared items: no deadlock, and every co-visit
    counted exactly as a sequential replay counts it (pairs depend on each user's order only)."""
    ids = item_ids(built)[:12]
    threads, users_each = 6, 2
    streams = [
        [
            EventIn(e.user_id.replace("u", f"w{w}-"), e.item_id, e.type, e.ts, e.value, None)
            for e in seeded_stream(ids, 160, seed=100 + w, users=users_each)
        ]
        for w in range(threads)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(events: list[EventIn]) -> None:
        try:
            barrier.wait()
            record(built, events, batch=20)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(s,)) for s in streams]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []

    with built.session() as session:
        meta: dict[str, tuple[str | None, list[str]]] = {
            r.id: (r.category, []) for r in session.execute(select(Item.id, Item.category))
        }
        vectors = built.vectors.get(session, ids)
    reference = Reference(built.settings, meta, vectors)
    for events in streams:
        for e in events:
            reference.apply(e)
    stored = snapshot(built)
    assert stored["events"] == sum(len(s) for s in streams)
    assert stored["covisits"] == dict(reference.covisits) and stored["covisits"]


def test_a_user_row_read_in_the_same_session_sees_the_batch(built: Runtime) -> None:
    """Rows are written with SQL behind the ORM: objects already loaded are refreshed."""
    ids = item_ids(built)
    t = utcnow() - timedelta(hours=2)
    with built.write_session() as session:
        record_events(session, [EventIn("same", ids[0], "click", t)], built.settings, built.vectors)
    with built.write_session() as session:
        loaded = session.get(UserFeatures, "same")
        assert loaded is not None and loaded.event_count == 1
        later = EventIn("same", ids[1], "purchase", t + timedelta(minutes=1))
        record_events(session, [later], built.settings, built.vectors)
        assert _user(session, "same").event_count == 2
        assert session.get(ItemStats, ids[1]) is not None


def _user(session: Session, user_id: str) -> UserFeatures:
    row = session.get(UserFeatures, user_id)
    assert row is not None
    return row
