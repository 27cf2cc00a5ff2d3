"""Items written between builds are searchable at once (the delta) and folded in by a build."""

from __future__ import annotations

import time
from typing import Any

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
