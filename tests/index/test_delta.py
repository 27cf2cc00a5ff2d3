"""Items written between builds are searchable at once (the delta) and folded in by a build."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from engine.index.delta import DeltaSnapshot
from engine.index.lexical import best_first
from engine.runtime import Runtime
from indexer.build import build

NEW = {
    "id": "quokka-island",
    "title": "Quokkaville",
    "text": "A tiny island famous for the xylospongium festival and friendly marsupials.",
    "category": "island",
}


def ids(client: Any, **params: Any) -> list[str]:
    body = client.get("/v1/search", query_string=params).get_json()
    return [r["id"] for r in body["results"]]


def test_new_item_is_searchable_before_the_next_build(client: Any, built: Runtime) -> None:
    assert "quokka-island" not in ids(client, q="xylospongium festival", k=10)
    assert client.post("/v1/items", json=NEW).status_code == 201
    snapshot = built.delta.refresh()
    assert snapshot is not None and snapshot.ids == ["quokka-island"]
    assert ids(client, q="xylospongium festival", k=3)[0] == "quokka-island"  # BM25 on the delta
    assert "quokka-island" in ids(client, q="island with friendly marsupials", k=5)  # vectors
    assert ids(client, q="xylospongium", k=3, category="island")[0] == "quokka-island"
    assert "quokka-island" not in ids(client, q="xylospongium", k=10, category="city")


def test_the_background_follower_picks_writes_up(client: Any, built: Runtime) -> None:
    ids(client, q="warm up", k=1)  # the first search starts the follower
    client.post("/v1/items", json=NEW)
    deadline = time.monotonic() + 10
    while "quokka-island" not in ids(client, q="xylospongium festival", k=3):
        assert time.monotonic() < deadline, "the delta never picked the new item up"
        time.sleep(0.1)


def test_rewritten_items_shadow_their_stale_row(client: Any, built: Runtime) -> None:
    assert ids(client, q="Eiffel Tower and the Louvre", k=1) == ["paris-france"]
    paris = client.get("/v1/items/paris-france").get_json()
    changed = {k: paris[k] for k in ("id", "title", "category", "tags", "attributes")}
    changed["text"] = "Closed for renovation; come for underwater volcano diving instead."
    client.post("/v1/items", json=changed)
    built.delta.refresh()
    assert ids(client, q="Eiffel Tower and the Louvre", k=1) != ["paris-france"]
    assert "paris-france" in ids(client, q="Paris underwater volcano diving renovation", k=3)
    # Only the text matters: an attribute change is not re-embedded.
    tokyo = client.get("/v1/items/tokyo-japan").get_json()
    tokyo_new = {k: tokyo[k] for k in ("id", "title", "text", "category", "tags")}
    tokyo_new["attributes"] = {**tokyo["attributes"], "avg_daily_cost_usd": 999}
    client.post("/v1/items", json=tokyo_new)
    snapshot = built.delta.refresh()
    assert snapshot is not None and snapshot.ids == ["paris-france"]


def test_the_next_build_folds_the_delta_in(client: Any, built: Runtime) -> None:
    client.post("/v1/items", json=NEW)
    built.delta.refresh()
    with built.session() as session:
        report = build(built, session)
    snapshot = built.delta.refresh()
    assert snapshot is not None and snapshot.base_version == report.version
    assert snapshot.ids == []
    assert ids(client, q="xylospongium festival", k=1) == ["quokka-island"]


def test_a_poll_does_not_read_settled_rows_again(
    client: Any, built: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written before the settle horizon are read once: the watermark moves past the
    newest of them, so a bulk update is not read again at every poll; a later write is."""
    from engine.catalog import items as catalog

    rows = [{**NEW, "id": f"quokka-{n}", "title": f"Quokka island {n}"} for n in range(30)]
    assert client.post("/v1/items", json=rows).status_code == 201
    later = catalog.clock.utcnow() + timedelta(seconds=5)  # as if time had passed: settled
    monkeypatch.setattr(catalog.clock, "utcnow", lambda: later)
    first = built.delta.refresh()
    assert first is not None and len(first.ids) == 30
    state = built.delta._state
    # Nothing kept to tell a re-read row from a new one: none will be read again. (Before,
    # the 30 rows, stamped alike, stayed here and were read again at every poll.)
    assert state is not None and state.seen == {}
    assert state.watermark > max(r.updated_at for r in _rows(built, "quokka-"))
    again = built.delta.refresh()
    assert again is first  # nothing new: the same snapshot, and nothing was re-read
    monkeypatch.undo()
    assert client.post("/v1/items", json={**NEW, "id": "quokka-late"}).status_code == 201
    late = built.delta.refresh()
    assert late is not None and "quokka-late" in late.ids and len(late.ids) == 31


def _rows(runtime: Runtime, prefix: str) -> list[Any]:
    from sqlalchemy import select

    from engine.store.models import Item

    with runtime.session() as session:
        return list(session.execute(select(Item.id, Item.updated_at).where(
            Item.id.startswith(prefix))).all())  # fmt: skip


@pytest.mark.parametrize("k", [1, 7, 50, 400])
def test_best_first_is_a_stable_sorts_first_k(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(50):
        scores = rng.integers(0, 12, size=300).astype(np.float32)  # many ties
        expected = np.argsort(-scores, kind="stable")[:k]
        assert best_first(scores, k).tolist() == expected.tolist()
        ties = rng.permutation(300)
        by_key = sorted(range(300), key=lambda i: (-scores[i], ties[i]))[:k]
        assert best_first(scores, k, ties=ties).tolist() == by_key


def test_a_big_delta_is_searched_exactly_per_category() -> None:
    """The delta's exact search, as a brute-force sort says, ties in row order, with and
    without a category (indexed once per snapshot)."""
    rng = np.random.default_rng(3)
    n, dim = 3000, 16
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[100:110] = vectors[5]  # equal scores
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    categories = [None if i % 7 == 0 else f"c{i % 3}" for i in range(n)]
    snapshot = DeltaSnapshot(
        "v1",
        datetime.now(UTC),
        ids=[f"i{i}" for i in range(n)],
        categories=categories,
        texts=[""] * n,
        vectors=vectors,
    )
    for query in (vectors[5], rng.normal(size=dim).astype(np.float32)):
        scores = vectors @ query
        for category in (None, "c1", "nope"):
            rows = [i for i in range(n) if category is None or categories[i] == category]
            expected = sorted(rows, key=lambda i: (-scores[i], i))[:50]
            found = snapshot.search(query, 50, category)
            assert [i for i, _ in found] == [f"i{i}" for i in expected]
            assert [s for _, s in found] == pytest.approx([float(scores[i]) for i in expected])
