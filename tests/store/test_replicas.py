"""Searches on a real PostgreSQL streaming replica (engine/store/replicas.py).

The module makes a private primary and a replica of it (tests/pg_replica.py) whose replay
trails by a second (recovery_min_apply_delay), as a replica under load would. Searches read
the replica, a user's own writes are read from the primary until it has them (in the process
that wrote and in another one), a replica too far behind is skipped, its lag is in /metrics,
and stopping it under a stream of searches fails none of them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.replicas import Replica, ReplicaRouter, lsn, replica_urls
from engine.users.events import EventIn
from engine.users.recording import record_events
from tests.pg_replica import StreamingPair, missing
from tests.search import test_context as issue_3

MAX_LAG_S = 5.0


@pytest.fixture(scope="module")
def pair() -> Iterator[StreamingPair]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    made = StreamingPair(apply_delay_s=1.0)
    yield made
    made.stop()


@pytest.fixture
def settings(tmp_path: Path, pair: StreamingPair) -> Settings:
    """The conftest fixtures (runtime, built, client) on the private primary and its replica."""
    if not pair.replica.running:
        pair.replica.start()
    engine = create_engine(pair.primary_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return Settings(
        data_dir=tmp_path / "var",
        database_url=pair.primary_url,
        database_replica_url=pair.replica_url,
        replica_max_lag_s=MAX_LAG_S,
        index_poll_s=0.0,
    )


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def router_of(runtime: Runtime) -> tuple[ReplicaRouter, Replica]:
    assert runtime.replicas is not None
    return runtime.replicas, runtime.replicas.replicas[0]


def caught_up(runtime: Runtime, pair: StreamingPair) -> None:
    """The replica has replayed all the primary wrote, and the router knows it."""
    pair.wait_replayed()
    router, replica = router_of(runtime)
    router.start()
    wait_for(router.listening.is_set, "the router listens for users' writes")
    since = router.clock()
    wait_for(lambda: replica.safe_at is not None and replica.safe_at > since, "caught up")


def ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["results"]]


def test_without_replica_urls_there_is_no_router(sqlite_settings: Settings) -> None:
    runtime = Runtime(sqlite_settings)
    try:
        assert runtime.replicas is None
    finally:
        runtime.close()


def test_replicas_need_postgresql(sqlite_settings: Settings) -> None:
    beside_sqlite = sqlite_settings.model_copy(
        update={"database_replica_url": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
    )
    with pytest.raises(ConfigError, match="RECSEARCH_DATABASE_REPLICA_URL"):
        replica_urls(beside_sqlite)
    not_postgres = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/x",
        database_replica_url=f"sqlite:///{sqlite_settings.data_dir}/r.db",
    )
    with pytest.raises(ConfigError, match="is not PostgreSQL"):
        replica_urls(not_postgres)


def test_wal_positions_compare_as_numbers() -> None:
    assert lsn("0/3016040") == 0x3016040
    assert lsn("16/B374D848") > lsn("15/FFFFFFFF") > lsn("0/0")


def test_issue_3_user_context_with_a_replica_behind_by_a_second(
    client: Any, built: Runtime, pair: StreamingPair
) -> None:
    caught_up(built, pair)
    _, replica = router_of(built)
    before = replica.reads
    issue_3.test_clicks_move_that_category_up_at_once(client, built)
    issue_3.test_purchased_items_are_not_recommended_again(client, built)
    issue_3.test_exclude_all_seen(client, built)
    issue_3.test_read_your_writes_and_profile(client, built)
    assert replica.reads > before  # the replica served the searches it could


def test_searches_read_the_replica_and_own_writes_the_primary(
    client: Any, built: Runtime, pair: StreamingPair
) -> None:
    caught_up(built, pair)
    _, replica = router_of(built)
    seen = ids(issue_3.search(client, q="island", k=3))
    pair.on_replica("SELECT pg_wal_replay_pause()")
    try:
        # "quiet" writes as a bulk load does (no user named to the router); "me" through the API.
        with built.write_session() as session:
            events = [EventIn(user_id="quiet", item_id=i, type="view", ts=utcnow()) for i in seen]
            record_events(session, events, built.settings, built.vectors)
        issue_3.post_events(client, [{"user_id": "me", "item_id": i, "type": "view"} for i in seen])
        reads = replica.reads
        quiet = issue_3.search(client, q="island", user_id="quiet", k=20, exclude_seen="all")
        assert replica.reads == reads + 1
        assert set(seen) <= set(ids(quiet))  # the replica has not replayed quiet's views yet
        mine = issue_3.search(client, q="island", user_id="me", k=20, exclude_seen="all")
        assert replica.reads == reads + 1  # the primary served "me"
        assert not set(seen) & set(ids(mine))
    finally:
        pair.on_replica("SELECT pg_wal_replay_resume()")
    caught_up(built, pair)
    reads = replica.reads
    for user in ("quiet", "me"):
        body = issue_3.search(client, q="island", user_id=user, k=20, exclude_seen="all")
        assert not set(seen) & set(ids(body))
    assert replica.reads == reads + 2  # both from the replica, now that it has their writes


def test_another_process_reads_a_users_write_from_the_primary(
    client: Any, built: Runtime, pair: StreamingPair
) -> None:
    caught_up(built, pair)
    other = Runtime(built.settings, embedder=built.embedder)
    try:
        router, replica = router_of(other)
        router.start()
        wait_for(router.listening.is_set, "the other process listens")
        caught_up(other, pair)
        seen = ids(issue_3.search(client, q="beach", k=3))
        pair.on_replica("SELECT pg_wal_replay_pause()")
        try:
            issue_3.post_events(
                client, [{"user_id": "roamer", "item_id": i, "type": "view"} for i in seen]
            )
            request = SearchRequest(q="beach", user_id="roamer", k=20, exclude_seen="all")
            wait_for(lambda: router.pick("roamer") is None, "the write is heard", timeout_s=2)
            reads = replica.reads
            found = [h.id for h in other.search(request).results]
            assert not set(seen) & set(found)
            assert replica.reads == reads  # the primary served "roamer"
            anonymous = other.search(SearchRequest(q="beach", k=5))
            assert anonymous.results and replica.reads == reads + 1  # others read the replica
        finally:
            pair.on_replica("SELECT pg_wal_replay_resume()")
    finally:
        other.close()


def test_a_replica_too_far_behind_is_skipped(
    client: Any, built: Runtime, pair: StreamingPair
) -> None:
    strict = Runtime(
        built.settings.model_copy(update={"replica_max_lag_s": 1.5}), embedder=built.embedder
    )
    try:
        router, replica = router_of(strict)
        caught_up(strict, pair)
        assert router.pick(None) is replica
        pair.on_replica("SELECT pg_wal_replay_pause()")
        try:
            issue_3.post_events(
                client, [{"user_id": "w", "item_id": "tokyo-japan", "type": "view"}]
            )
            wait_for(lambda: (router.lag_s(replica) or 0) > 1.5, "the lag passes the bound")
            reads = replica.reads
            for _ in range(5):
                assert strict.search(SearchRequest(q="temple", k=5)).results
            assert replica.reads == reads  # skipped: the primary served them
            assert replica.is_up  # it answers; it is only behind
        finally:
            pair.on_replica("SELECT pg_wal_replay_resume()")
        wait_for(lambda: router.pick(None) is replica, "the replica is used again")
    finally:
        strict.close()


def test_lag_is_in_metrics(client: Any, built: Runtime, pair: StreamingPair) -> None:
    caught_up(built, pair)
    body = client.get("/metrics").get_data(as_text=True)
    label = f'replica="127.0.0.1:{pair.replica.port}/recsearch"'
    lag = re.search(rf"^recsearch_replica_lag_seconds\{{{label}\}} (\S+)$", body, re.M)
    assert lag is not None, body[-2000:]
    assert 0 <= float(lag.group(1)) < MAX_LAG_S
    assert f"recsearch_replica_up{{{label}}} 1.0" in body
    assert f"recsearch_replica_max_lag_seconds {MAX_LAG_S}" in body


def test_a_replica_stopped_mid_load_fails_no_search(
    client: Any, built: Runtime, pair: StreamingPair
) -> None:
    caught_up(built, pair)
    router, replica = router_of(built)
    stopper = threading.Timer(0.5, pair.replica.stop)
    errors: list[str] = []
    done = 0
    reads_before_stop = 0
    stopper.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or done < 100:
            user = f"u{done % 7}" if done % 2 else None
            response = client.post("/v1/search", json={"q": "old town", "k": 5, "user_id": user})
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.get_data(as_text=True)[:200]}")
            done += 1
            if pair.replica.running:
                reads_before_stop = replica.reads
    finally:
        stopper.join()
    assert errors == [], errors[:3]
    assert reads_before_stop > 0  # the replica served searches before it stopped
    assert not pair.replica.running and not replica.is_up and router.pick(None) is None
    reads = replica.reads
    assert issue_3.search(client, q="old town", k=5)["results"]
    assert replica.reads == reads
