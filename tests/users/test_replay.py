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
    assert (
        by_id["kyoto-japan"].covisit_score == 1.0 and by_id["kyoto-japan"].covisit_rank is not None
    )
    assert "tokyo-japan" not in {c.item_id for c in stage.candidates if c.covisit_rank is not None}


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
