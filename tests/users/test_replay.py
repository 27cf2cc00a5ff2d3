"""Co-visitation, point-in-time replay (no future leaks into training), MovieLens evaluation."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from engine.core.clock import utcnow
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.models import Covisit, Item
from engine.users.events import EventIn, validate_event
from engine.users.recording import record_events
from engine.users.replay import ReplayState
from engine.users.state import SqlState
from indexer.train import train_from_events
from tests.conftest import ROOT, SHARED_DATA

SAMPLE_EVENTS = ROOT / "data" / "events.jsonl"


def sample_events() -> list[EventIn]:
    now = utcnow()
    rows = [json.loads(line) for line in SAMPLE_EVENTS.read_text().splitlines()]
    return [validate_event(r, now=now) for r in rows]


def test_covisits_are_counted_and_become_candidates(built: Runtime) -> None:
    t = utcnow()
    events = [
        EventIn("a", "tokyo-japan", "click", t),
        EventIn("a", "kyoto-japan", "click", t + timedelta(seconds=1)),
        EventIn("a", "seoul-south-korea", "view", t + timedelta(seconds=2)),
    ]
    with built.write_session() as session:
        record_events(session, events, built.settings, built.vectors)
    with built.session() as session:
        pairs = {(c.item_a, c.item_b): c.weight for c in session.scalars(select(Covisit))}
    assert pairs == {
        ("kyoto-japan", "tokyo-japan"): 1.0,
        ("tokyo-japan", "kyoto-japan"): 1.0,
        ("seoul-south-korea", "kyoto-japan"): 1.0,
        ("kyoto-japan", "seoul-south-korea"): 1.0,
        ("seoul-south-korea", "tokyo-japan"): 1.0,
        ("tokyo-japan", "seoul-south-korea"): 1.0,
    }
    with built.write_session() as session:
        record_events(
            session, [EventIn("b", "tokyo-japan", "click", t)], built.settings, built.vectors
        )
    with built.session() as session:
        stage = built.searcher.first_stage(session, SearchRequest(user_id="b", q="museums", k=10))
    by_id = {c.item_id: c for c in stage.candidates}
    # One co-visit, damped by Kyoto's one event: 1 / (1 + 1)^damping.
    damped = 1.0 / 2.0**built.settings.covisit_damping
    assert by_id["kyoto-japan"].covisit_score == pytest.approx(damped, rel=1e-12)
    assert by_id["kyoto-japan"].covisit_rank is not None
    assert "tokyo-japan" not in {c.item_id for c in stage.candidates if c.covisit_rank is not None}


def test_damped_covisits_rank_lift_above_raw_popularity(built: Runtime) -> None:
    """Kyoto is co-visited with Tokyo three times and Seoul twice, but Kyoto has 30 events
    and Seoul 2: damped by their event counts, Seoul ranks first (3 / 31^0.3 < 2 / 3^0.3);
    with the damping off, the raw counts put Kyoto first. SQL and the replay agree."""
    t = utcnow() - timedelta(hours=1)
    tokyo, kyoto, seoul = "tokyo-japan", "kyoto-japan", "seoul-south-korea"
    events = []
    for n in range(3):
        events += [EventIn(f"k{n}", tokyo, "click", t), EventIn(f"k{n}", kyoto, "click", t)]
    for n in range(2):
        events += [EventIn(f"s{n}", tokyo, "click", t), EventIn(f"s{n}", seoul, "click", t)]
    events += [EventIn(f"other{n}", kyoto, "view", t) for n in range(27)]
    events.append(EventIn("u", tokyo, "click", t + timedelta(seconds=1)))
    events = [
        EventIn(e.user_id, e.item_id, e.type, e.ts + timedelta(milliseconds=n))
        for n, e in enumerate(events)
    ]
    with built.write_session() as session:
        record_events(session, events, built.settings, built.vectors)
    request = SearchRequest(user_id="u", k=10)

    def covisit_order(runtime: Runtime, state: Any = None) -> list[str]:
        with runtime.session() as session:
            stage = runtime.searcher.first_stage(session, request, state=state)
        hits = [c for c in stage.candidates if c.covisit_rank is not None]
        return [c.item_id for c in sorted(hits, key=lambda c: c.covisit_rank or 0)]

    assert built.settings.covisit_damping == 0.3
    assert covisit_order(built) == [seoul, kyoto]
    raw = Runtime(built.settings.replace(covisit_damping=0.0), embedder=built.embedder)
    try:
        assert covisit_order(raw) == [kyoto, seoul]
    finally:
        raw.close()

    artifact = built.searcher.artifact()
    vectors = artifact.vectors()
    with built.session() as session:
        meta = {r.id: (r.category, list(r.tags or [])) for r in session.scalars(select(Item))}
    replay = ReplayState(
        built.settings, meta, {i: vectors[row] for row, i in enumerate(artifact.ids)}
    )
    for event in events:
        replay.apply(event)
    replay.now = events[-1].ts
    assert covisit_order(built, replay) == [seoul, kyoto]


def test_replayed_features_equal_serving_features_from_the_past_only(built: Runtime) -> None:
    events = sorted(sample_events(), key=lambda e: (e.ts, e.user_id, e.item_id))
    target = [e for e in events if e.user_id == "beach-lover-2" and e.type == "click"][8]
    past = [e for e in events if e.ts < target.ts]
    request = SearchRequest(user_id=target.user_id, k=10, exclude_seen="all")

    # Serving: a database holding only the past, asked as of the event's time.
    with built.write_session() as session:
        record_events(session, past, built.settings, built.vectors)
    with built.session() as session:
        served = built.searcher.first_stage(session, request, state=SqlState(session, target.ts))

    # Training: the replay of the whole log, stopped just before the event.
    artifact = built.searcher.artifact()
    vectors = {item_id: artifact.vectors()[row] for row, item_id in enumerate(artifact.ids)}
    with built.session() as session:
        meta = {
            r.id: (r.category, list(r.tags))
            for r in session.execute(select(Item.id, Item.category, Item.tags))
        }
    replay = ReplayState(built.settings, meta, vectors)
    for e in events:
        if e is target:
            break
        replay.apply(e)
    replay.now = target.ts
    with built.session() as session:
        replayed = built.searcher.first_stage(session, request, state=replay)

    assert [c.item_id for c in replayed.candidates] == [c.item_id for c in served.candidates]
    np.testing.assert_allclose(replayed.x, served.x, rtol=1e-9, atol=1e-12)

    # And the future would have changed them: the check above can fail.
    for e in events[len(past) :]:
        replay.apply(e)
    with built.session() as session:
        future = built.searcher.first_stage(session, request, state=replay)
    assert [c.item_id for c in future.candidates] != [
        c.item_id for c in served.candidates
    ] or not np.allclose(future.x, served.x)


def test_train_from_events_on_the_sample_histories(built: Runtime) -> None:
    with built.session() as session:
        ranker, report = train_from_events(built, session, sample_events(), max_per_user=10)
    assert report.examples > report.positives >= 40 and report.version == "v000001"
    assert 0.0 <= report.validation_auc <= 1.0 and np.isfinite(ranker.weights).all()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"needs the datasets in {SHARED_DATA}")
def test_evaluate_movielens_through_the_engine(one_runtime: Runtime) -> None:
    runtime = one_runtime  # one database: the metrics do not depend on it
    from indexer.evaluate_movielens import evaluate_movielens

    result: dict[str, Any] = evaluate_movielens(
        runtime, SHARED_DATA / "movielens-small", max_users=60
    )
    metrics = result["metrics"]
    assert set(metrics) == {"popularity", "retrieval", "reranked", "als"}
    assert result["users"] == 60 and result["history_events"] > 1000
    for values in metrics.values():
        assert (
            set(values) == {"ndcg@10", "hr@10"} and 0 <= values["ndcg@10"] <= values["hr@10"] <= 1
        )
    assert result["model"]["examples"] > result["model"]["positives"] > 0
    assert (runtime.settings.data_dir / "eval" / "movielens" / "recsearch.db").is_file()


def test_the_validation_split_never_sees_a_test_movie() -> None:
    """`evaluate movielens --split validation` holds out, per user, the last liked movie before
    the test one, from a history that has neither the test movie nor anything after it."""
    from indexer.evaluate_movielens import split_last_liked

    t = utcnow() - timedelta(days=10)

    def rating(user: str, item: str, value: float, minute: int) -> EventIn:
        return EventIn(user, item, "rating", t + timedelta(minutes=minute), value=value)

    events = [
        rating("a", "m1", 5, 0),
        rating("a", "m2", 4, 1),
        rating("a", "m3", 2, 2),
        rating("a", "m4", 5, 3),  # a's test movie
        rating("a", "m5", 1, 4),  # after it: in neither history
        rating("b", "m1", 4, 0),
        rating("b", "m6", 5, 5),  # b's test movie; b has nothing to validate on
    ]
    history, test = split_last_liked(events)
    assert {u: e.item_id for u, e in test.items()} == {"a": "m4", "b": "m6"}
    val_history, val = split_last_liked(history)
    assert {u: e.item_id for u, e in val.items()} == {"a": "m2", "b": "m1"}
    assert [(e.user_id, e.item_id) for e in val_history] == [("a", "m1")]  # m3 came after m2
    test_events = {(e.user_id, e.item_id) for e in test.values()}
    assert not test_events & {(e.user_id, e.item_id) for e in [*val_history, *val.values()]}
    assert all(e.ts <= test[e.user_id].ts for e in [*val_history, *val.values()])
