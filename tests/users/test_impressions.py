"""Serve-time logging: each search's shown items and features, joined to later clicks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.core.clock import utcnow
from engine.core.errors import InvalidInput
from engine.runtime import Runtime
from engine.store.models import Impression
from indexer.examples import impression_examples
from indexer.train import train_from_impressions

QUERIES = ["beach", "mountains", "old town", "desert", "wine", "temples", "lakes", "safari"]


def test_each_search_logs_what_it_showed(client: Any, built: Runtime) -> None:
    body = client.get("/v1/search?q=ancient+temples&k=5&explain=true&user_id=ann").get_json()
    assert built.impressions.flush() == 5
    with built.session() as session:
        rows = session.scalars(
            select(Impression)
            .where(Impression.request_id == body["request_id"])
            .order_by(Impression.position)
        ).all()
    assert [r.item_id for r in rows] == [r["id"] for r in body["results"]]
    assert [r.position for r in rows] == list(range(5)) and {r.user_id for r in rows} == {"ann"}
    assert rows[0].model_version == "prior" and rows[0].index_version == body["index_version"]
    for row, result in zip(rows, body["results"], strict=True):
        logged = dict(zip(row.features["names"], row.features["values"], strict=True))
        assert logged == pytest.approx(result["explanation"]["features"])


def test_clicks_on_logged_results_train_a_model(client: Any, built: Runtime) -> None:
    with pytest.raises(InvalidInput, match="no logged impressions"):
        with built.session() as session:
            train_from_impressions(built, session)
    clicks = 0
    for n in range(60):
        q = QUERIES[n % len(QUERIES)]
        body = client.get(f"/v1/search?q={q}&k=10&user_id=u{n % 7}&explain=true").get_json()
        # The simulated user clicks whichever of results 2..10 matches the words best.
        results = body["results"][1:]
        best = max(results, key=lambda r: r["explanation"]["features"]["query_sim"])
        event = {
            "user_id": f"u{n % 7}",
            "item_id": best["id"],
            "type": "click",
            "request_id": body["request_id"],
        }
        assert client.post("/v1/events", json=event).status_code == 200
        clicks += 1
    built.impressions.flush()
    with built.session() as session:
        x, y, order, names = impression_examples(built, session)
    assert len(y) == 600 and int(y.sum()) == clicks and int(order.max()) == 59
    with built.session() as session:
        ranker, report = train_from_impressions(built, session, promote=True)
    assert report.examples == 600 and report.positives == 60
    assert report.validation_queries == 12 and report.validation_auc > 0.8
    assert report.weights["query_sim_norm"] > 0 or report.weights["query_sim"] > 0
    body = client.get("/v1/search?q=beach&k=3&explain=true").get_json()
    assert body["results"][0]["explanation"]["model"] == report.version


def test_retention_purges_old_impressions(client: Any, built: Runtime) -> None:
    client.get("/v1/search?q=lakes&k=4")
    built.impressions.flush()
    log = built.impressions
    log.clock = lambda: utcnow() + timedelta(days=31)
    assert log.purge() == 4
    with built.session() as session:
        assert session.scalar(select(func.count()).select_from(Impression)) == 0
