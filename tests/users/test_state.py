"""The request path's reads (issue 9): item fields come from the index version and its delta,
SQL is read once per search (the user with the co-visits and the deletions since the process's
item watch last looked), popularity is at most a poll old, deletions vanish at
once in every process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import event

from engine.catalog.item_watch import ItemWatch
from engine.core.clock import utcnow
from engine.index.artifact import ITEMS
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from engine.store.db import DriverStatement
from engine.store.models import ItemTombstone
from engine.users.profile import UserState
from engine.users.state import SqlState
from tests.conftest import SAMPLE_CATALOG

FIELDS = ("title", "text", "tags", "attributes", "created_at")
EIFFEL = SearchRequest(q="Eiffel Tower and the Louvre", k=3)


@contextmanager
def statements(runtime: Runtime) -> Iterator[list[str]]:
    """The SQL this thread sends while the block runs (other threads: the delta's poll)."""
    seen: list[str] = []
    me = threading.get_ident()

    def record(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if threading.get_ident() == me and sql.split()[0].upper() not in ("BEGIN", "COMMIT"):
            seen.append(sql)

    engines = list({id(e.pool): e for e in (runtime.db, runtime.search_db)}.values())
    for engine in engines:  # searches read PostgreSQL through a pool of their own
        event.listen(engine, "before_cursor_execute", record)
    try:
        with driver_statements() as direct:
            yield seen
        seen += direct
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


@contextmanager
def driver_statements() -> Iterator[list[str]]:
    """The SQL this thread runs through engine.store.db.DriverStatement while the block runs: a
    search's reads, which go to the driver's connection past SQLAlchemy's execution events
    (the statements still run; this only writes down their text)."""
    seen: list[str] = []
    me = threading.get_ident()
    rows = DriverStatement.rows

    def spy(self: DriverStatement, engine: Any, params: dict[str, Any]) -> Any:
        if threading.get_ident() == me:
            seen.append(self.sql)
        return rows(self, engine, params)

    DriverStatement.rows = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        DriverStatement.rows = rows  # type: ignore[method-assign]


def search_ids(client: Any, **params: Any) -> list[str]:
    response = client.get("/v1/search", query_string=params)
    assert response.status_code == 200, response.get_json()
    return [r["id"] for r in response.get_json()["results"]]


def test_a_search_reads_sql_once_and_no_item_fields(client: Any, built: Runtime) -> None:
    events = [
        {"user_id": "reader", "item_id": i, "type": "click"}
        for i in ("tokyo-japan", "kyoto-japan", "paris-france")
    ]
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    # Merchandising rules and the running experiment are read once per process, then by
    # threads of their own (engine.core.reloaded, tests/test_reloaded.py), never by a search.
    built.rules.get()
    built.experiments.get()
    built.watch.ready()  # a process's first search reads popularity and tombstones whole
    for params in (
        {"q": "temples and gardens"},  # the deletions since the item watch looked
        {"q": "temples and gardens", "user_id": "reader"},  # with the user and co-visits
        {"user_id": "reader", "context_items": "zermatt-switzerland"},
    ):
        with statements(built) as seen:
            assert search_ids(client, **params)
        assert len(seen) == 1, seen
        assert "item_tombstones" in seen[0], "the deletion check must read SQL"
        if "user_id" in params:
            assert "user_features" in seen[0], seen
        for sql in seen:
            selected = sql.split("FROM")[0]
            assert not any(f"items.{f}" in selected for f in FIELDS), sql


def test_a_search_sends_no_begin_and_still_reads_the_last_write(
    client: Any, built: Runtime
) -> None:
    """Searches read in autocommit on both databases: no BEGIN and no COMMIT sent; each
    statement sees what was committed when it ran, so the next search reads the last event."""
    sent: list[str] = []  # what this thread sends (not the background polls)
    ended: list[str] = []  # how its transactions ended, at the driver
    me = threading.get_ident()

    def record(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if threading.get_ident() == me:
            sent.append(sql.split()[0].upper())

    def commit(conn: Any) -> None:
        if threading.get_ident() == me:
            ended.append("COMMIT")

    driver: list[str] = []  # on SQLite: what the library ran on this thread's connections

    def trace(dbapi_connection: Any, *args: Any) -> None:
        if hasattr(dbapi_connection, "set_trace_callback") and threading.get_ident() == me:
            dbapi_connection.set_trace_callback(
                lambda sql: (
                    driver.append(sql.split()[0].upper()) if threading.get_ident() == me else None
                )
            )

    engines = list({id(e.pool): e for e in (built.db, built.search_db)}.values())
    built.watch.ready()
    # The rules and the running experiment: read once, then in threads of their own.
    built.rules.get()
    built.experiments.get()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
        event.listen(engine, "commit", commit)
        event.listen(engine, "checkout", trace)
    try:
        with driver_statements() as direct:
            assert search_ids(client, q="temples and gardens", user_id="reader")
        sent += [sql.split()[0].upper() for sql in direct]
        assert sent and "BEGIN" not in sent and not ended, (sent, ended)
        # What SQLite itself ran for this thread (every statement, whatever sent it).
        assert driver if built.db.dialect.name == "sqlite" else not driver
        assert "BEGIN" not in driver and "COMMIT" not in driver, driver
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
            event.remove(engine, "commit", commit)
            event.remove(engine, "checkout", trace)
    click = {"user_id": "reader", "item_id": "kyoto-japan", "type": "click"}
    assert client.post("/v1/events", json=click).status_code == 200  # committed when it answers
    with built.read_session() as session:
        user = SqlState(session, utcnow()).user("reader")
    assert user is not None and "kyoto-japan" in {r[0] for r in user.recent}


def test_the_user_and_the_co_visits_come_in_one_read_with_the_last_event(
    client: Any, built: Runtime
) -> None:
    """Read-your-writes: the next search sees the event just posted, in its one user read."""
    clicks = ["tokyo-japan", "kyoto-japan"]
    for item_id in clicks:  # one at a time: each pairs with the one before
        event = {"user_id": "pairs", "item_id": item_id, "type": "click"}
        assert client.post("/v1/events", json={"events": [event]}).status_code == 200
    with built.session() as session:
        state = SqlState(session, utcnow())
        user, covisits = state.user_with_covisits("pairs", window=5, limit=10)
        assert user is not None and user.event_count == 2
        assert {i for i, _ in covisits} == set(clicks)  # each co-visited with the other
        assert all(w > 0 for _, w in covisits)
        assert state.user_with_covisits("nobody", window=5, limit=10) == (None, [])
        user, none = state.user_with_covisits("pairs", window=0, limit=10)
        assert user is not None and none == []


def test_the_driver_reads_what_a_session_reads(client: Any, built: Runtime) -> None:
    """A search's two reads (the user with the co-visits and the deletions since the watch
    looked) run on the driver's own connection while the session has begun nothing
    (engine.store.db.DriverStatement); a session that has begun reads them itself. Both give the
    same values of the same types, on SQLite and PostgreSQL."""
    for item_id in ("tokyo-japan", "kyoto-japan", "paris-france"):
        event = {"user_id": "pairs", "item_id": item_id, "type": "purchase", "value": 2.5}
        assert client.post("/v1/events", json={"events": [event]}).status_code == 200
    built.watch.ready()
    assert client.delete("/v1/items/london-united-kingdom").status_code == 200  # after its horizon

    def read(begun: bool) -> tuple[Any, ...]:
        with built.read_session() as session, driver_statements() as direct:
            if begun:
                session.connection()
            state = SqlState(session, utcnow(), built.watch)
            user, covisits = state.user_with_covisits("pairs", window=5, limit=10)
            live = state.live_items(["london-united-kingdom", "tokyo-japan"])
            anonymous = SqlState(session, utcnow(), built.watch)
            anonymous_live = anonymous.live_items(["london-united-kingdom", "kyoto-japan"])
            nobody = anonymous.user_with_covisits("nobody", window=5, limit=10)
        assert bool(direct) != begun, direct
        return user, covisits, live, anonymous_live, nobody

    (user, covisits, live, anonymous_live, nobody), theirs = read(False), read(True)
    assert user is not None and theirs[0] is not None
    for name in UserState.__dataclass_fields__:
        ours, their = getattr(user, name), getattr(theirs[0], name)
        if name == "vector":
            assert ours.dtype == their.dtype and np.array_equal(ours, their)
        else:
            assert ours == their and type(ours) is type(their), name
    assert isinstance(user.first_ts, datetime) and user.event_count == 3
    assert covisits == theirs[1] and {i for i, _ in covisits} == {
        "paris-france",
        "kyoto-japan",
        "tokyo-japan",
    }
    assert all(type(w) is float for _, w in covisits)
    assert live == theirs[2] and "london-united-kingdom" not in live and "tokyo-japan" in live
    assert anonymous_live == theirs[3] and list(anonymous_live) == ["kyoto-japan"]
    assert nobody == theirs[4] == (None, [])


def test_popularity_follows_within_a_poll(client: Any, built: Runtime) -> None:
    """Popularity comes from the process's item watch: unchanged until it polls, then fresh
    (the poll runs every delta_poll_s, 0.5 s by default; here the test polls it)."""
    built.watch.close()  # no background poll: the test decides when the watch looks
    watch = built.searcher.watch = ItemWatch(built.sessions, poll_s=3600)

    def popularity() -> float:
        body = client.get("/v1/search?q=Eiffel+Tower+and+the+Louvre&k=3&explain=true").get_json()
        (hit,) = [r for r in body["results"] if r["id"] == "paris-france"]
        return float(hit["explanation"]["features"]["popularity"])

    before = popularity()
    event = {"user_id": "fan", "item_id": "paris-france", "type": "purchase"}
    assert client.post("/v1/events", json={"events": [event]}).status_code == 200
    assert popularity() == before  # the watch has not looked since
    watch.refresh()
    assert popularity() > before
    watch.close()


def test_the_item_watch_follows_deletions_and_items_written_again(
    client: Any, built: Runtime
) -> None:
    """A deletion vanishes at once although the watch has not looked (the search reads the
    tombstones since its horizon); once it has, the deletion is the watch's own; an item
    written again after its deletion is back once the watch looks."""
    built.watch.close()
    watch = built.searcher.watch = ItemWatch(built.sessions, poll_s=3600)
    eiffel = {"q": "Eiffel Tower and the Louvre", "k": 3}
    assert search_ids(client, **eiffel)[0] == "paris-france"
    paris = client.get("/v1/items/paris-france").get_json()
    assert client.delete("/v1/items/paris-france").status_code == 200
    assert "paris-france" not in search_ids(client, **eiffel)  # from the tombstone read
    # With a user the tombstones come in the user's statement: one with events, one without.
    click = {"user_id": "reader", "item_id": "london-united-kingdom", "type": "click"}
    assert client.post("/v1/events", json=click).status_code == 200
    for user_id in ("reader", "nobody-yet"):
        assert "paris-france" not in search_ids(client, **eiffel, user_id=user_id)
    watch.refresh()
    assert "paris-france" in watch.deleted
    with statements(built) as seen:
        assert "paris-france" not in search_ids(client, **eiffel)
    assert all("item_tombstones" in sql for sql in seen), seen  # nothing per candidate
    written = {k: paris[k] for k in ("id", "title", "text", "category", "tags", "attributes")}
    assert client.post("/v1/items", json=written).status_code == 201
    built.delta.refresh()
    watch.refresh()
    assert "paris-france" not in watch.deleted
    assert search_ids(client, **eiffel)[0] == "paris-france"
    watch.close()


def test_the_item_watch_forgets_the_deletions_a_build_pruned(client: Any, built: Runtime) -> None:
    """The watch's whole read of the tombstones (every RESYNC_S) replaces what it followed:
    a deletion the build pruned (no kept version holds the item) leaves its memory, and the
    item stays gone. Between whole reads nothing is forgotten."""
    from engine.catalog.items import prune_tombstones
    from indexer.build import build

    built.watch.close()
    following = ItemWatch(built.sessions, poll_s=3600, resync_s=3600)
    watch = built.searcher.watch = ItemWatch(built.sessions, poll_s=3600, resync_s=0)
    eiffel = {"q": "Eiffel Tower and the Louvre", "k": 3}
    for w in (following, watch):
        w.refresh()  # the first read: nothing deleted yet
    assert client.delete("/v1/items/paris-france").status_code == 200
    for w in (following, watch):
        w.refresh()
        assert "paris-france" in w.deleted
    with built.session() as session:
        build(built, session)  # a version without the item
    assert built.searcher.artifact().row_of("paris-france") is None
    with built.write_session() as session:  # as a build does once the deletion is old enough
        assert prune_tombstones(session, utcnow()) == 1
    for w in (following, watch):
        w.refresh()
    assert "paris-france" in following.deleted  # incremental reads only add
    assert "paris-france" not in watch.deleted and watch.deleted == {}
    assert "paris-france" not in search_ids(client, **eiffel)
    # A deletion after the whole read is followed as before.
    assert client.delete("/v1/items/london-united-kingdom").status_code == 200
    watch.refresh()
    assert set(watch.deleted) == {"london-united-kingdom"}
    following.close()
    watch.close()


def test_a_searcher_without_a_watch_reads_each_candidate(client: Any, built: Runtime) -> None:
    """Evaluation and tools search without a watch: existence and popularity per candidate."""
    expected = search_ids(client, q="quiet beaches", k=5)
    built.searcher.watch = None
    with statements(built) as seen:
        assert search_ids(client, q="quiet beaches", k=5) == expected
    assert any("item_stats" in sql for sql in seen), seen


def test_timings_without_explanations(client: Any, built: Runtime) -> None:
    body = client.get("/v1/search", query_string={"q": "beach", "timings": "true"}).get_json()
    assert set(body["timings_ms"]) == {"embed", "user", "retrieve", "features", "rank", "total"}
    assert all("explanation" not in r for r in body["results"])
    assert "timings_ms" not in client.get("/v1/search?q=beach").get_json()


def test_deleted_items_vanish_at_once_here_and_in_another_process(
    client: Any, built: Runtime
) -> None:
    other = Runtime(built.settings, embedder=built.embedder)  # another server on the same data
    try:
        top = search_ids(client, q="Eiffel Tower and the Louvre", k=3)
        assert top[0] == "paris-france"
        with other.session() as session:
            assert top[0] in [h.id for h in other.searcher.search(session, EIFFEL).results]
        assert client.delete("/v1/items/paris-france").status_code == 200
        assert "paris-france" not in search_ids(client, q="Eiffel Tower and the Louvre", k=3)
        with other.session() as session:
            found = other.searcher.search(session, EIFFEL).results
        assert "paris-france" not in [h.id for h in found]
        # An item written and deleted since the build, known to the delta.
        new = {"id": "quokka-island", "title": "Quokkaville", "text": "xylospongium festival"}
        assert client.post("/v1/items", json=new).status_code == 201
        built.delta.refresh()
        assert search_ids(client, q="xylospongium festival", k=1) == ["quokka-island"]
        assert client.delete("/v1/items/quokka-island").status_code == 200
        assert "quokka-island" not in search_ids(client, q="xylospongium festival", k=10)
    finally:
        other.close()


def test_fields_follow_the_delta_and_an_index_without_them_falls_back_to_sql(
    client: Any, built: Runtime
) -> None:
    tokyo = client.get("/v1/items/tokyo-japan").get_json()
    changed = {k: tokyo[k] for k in ("id", "title", "text", "category", "tags")}
    changed["attributes"] = {**tokyo["attributes"], "avg_daily_cost_usd": 999}
    client.post("/v1/items", json=changed)
    built.delta.refresh()
    hit = client.get("/v1/search?q=Tokyo,+Japan&k=1").get_json()["results"][0]
    assert hit["id"] == "tokyo-japan" and hit["attributes"]["avg_daily_cost_usd"] == 999

    # A version built before versions held item fields: served, reading them from SQL.
    expected = client.get("/v1/search?q=quiet+beaches&k=10").get_json()["results"]
    artifact = built.searcher.artifact()
    rows = json.loads((artifact.folder / ITEMS).read_text())
    old = {k: rows[k] for k in ("ids", "categories", "text_hashes")}
    (artifact.folder / ITEMS).write_text(json.dumps(old))
    fresh = Searcher(built.settings, built.embedder)
    assert fresh.artifact().items is None
    with built.session() as session:
        got = fresh.search(session, SearchRequest(q="quiet beaches", k=10)).results
    assert [(h.id, h.title, h.tags, h.attributes) for h in got] == [
        (r["id"], r["title"], r["tags"], r["attributes"]) for r in expected
    ]


def test_the_index_version_holds_every_item_field(built: Runtime) -> None:
    artifact = built.searcher.artifact()
    assert artifact.items is not None
    catalog = {r["id"]: r for r in map(json.loads, SAMPLE_CATALOG.read_text().splitlines())}
    assert len(artifact.items) == len(artifact.ids) == len(catalog)
    for item_id, fields in zip(artifact.ids, artifact.items, strict=True):
        row = catalog[item_id]
        assert fields.title == row["title"] and fields.category == row.get("category")
        assert list(fields.tags) == row.get("tags", [])
        assert fields.attributes == row.get("attributes", {})


def test_a_search_session_sends_no_transaction_on_postgresql(client: Any, built: Runtime) -> None:
    """Searches read in autocommit on PostgreSQL (no BEGIN/COMMIT round trips) and still see
    the last write; the pooled connection is transactional again for the next writer."""
    postgres = built.db.dialect.name == "postgresql"

    def autocommit(session: Any) -> bool:  # psycopg's flag: no BEGIN is sent when it is set
        return bool(getattr(session.connection().connection.driver_connection, "autocommit", 0))

    with built.read_session() as session:
        assert autocommit(session) == postgres
    event = {"user_id": "fresh", "item_id": "kyoto-japan", "type": "purchase"}
    assert client.post("/v1/events", json={"events": [event]}).status_code == 200
    assert "kyoto-japan" not in search_ids(client, user_id="fresh", q="Kyoto temples", k=10)
    try:  # a write that fails half-way leaves nothing: its connection has a transaction
        with built.write_session() as session:
            assert not autocommit(session)
            session.execute(
                ItemTombstone.__table__.insert(), [{"item_id": "x", "deleted_at": utcnow()}]
            )
            raise RuntimeError("half-way")
    except RuntimeError:
        pass
    with built.session() as session:
        assert session.get(ItemTombstone, "x") is None
