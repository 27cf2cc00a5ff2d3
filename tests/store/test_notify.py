"""Catalog changes announced at commit (engine.store.notify), on SQLite and PostgreSQL: each
server's listener hears writes made through other connections, never a rolled-back or
unchanged write, folds a burst into few wake-ups without losing the last, and survives a
dropped connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog.items import ItemIn, delete_items, upsert_items
from engine.core.config import Settings
from engine.store.db import ensure_schema, make_engine, session_factory
from engine.store.notify import Listener


class Heard:
    """A listener's callback: when it was called."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.event.set()

    def wait(self, after: float, timeout_s: float = 10.0) -> bool:
        """True once a call came at or after `after` (a time.monotonic())."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(t >= after for t in self.times):
                return True
            self.event.wait(0.02)
            self.event.clear()
        return False


@pytest.fixture
def database(settings: Settings) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    engine = make_engine(settings)
    ensure_schema(engine)
    yield engine, session_factory(engine)
    engine.dispose()


@pytest.fixture
def heard(
    settings: Settings, database: tuple[Engine, sessionmaker[Session]]
) -> Iterator[tuple[Listener, Heard]]:
    """A listener on an engine of its own, as another server process would have."""
    other = make_engine(settings)
    calls = Heard()
    listener = Listener(other, [calls])
    listener.start()
    assert listener.listening.wait(10), "the listener never started listening"
    time.sleep(0.1)  # past its first wake-up (PostgreSQL: for what came while nobody listened)
    yield listener, calls
    listener.close()
    other.dispose()


def item(n: int, text: str = "a text") -> ItemIn:
    return ItemIn(id=f"item-{n}", title=f"Item {n}", text=text)


def test_a_committed_write_or_delete_wakes_other_servers(
    database: tuple[Engine, sessionmaker[Session]], heard: tuple[Listener, Heard]
) -> None:
    _, sessions = database
    listener, calls = heard
    for change in ("insert", "update", "delete"):
        time.sleep(0.1)  # past the listener's gap, and a new file modification time
        before = time.monotonic()
        with sessions.begin() as session:
            if change == "delete":
                assert delete_items(session, ["item-1"]) == []
            else:
                upsert_items(session, [item(1, text=f"{change} text")])
        assert calls.wait(before), f"an {change} was not heard"
    assert listener.received >= 3


def test_rolled_back_and_unchanged_writes_wake_nobody(
    database: tuple[Engine, sessionmaker[Session]], heard: tuple[Listener, Heard]
) -> None:
    _, sessions = database
    listener, calls = heard
    with sessions.begin() as session:
        upsert_items(session, [item(1)])
    assert calls.wait(0)
    time.sleep(0.3)
    received, started = listener.received, time.monotonic()

    with sessions() as session:  # written, then rolled back
        upsert_items(session, [item(2)])
        session.rollback()
    with sessions.begin() as session:  # the same content again: nothing changes
        assert upsert_items(session, [item(1)]).changed == 0
    time.sleep(0.5)  # ten listener gaps: an announcement would have been heard by now
    assert listener.received == received
    assert not [t for t in calls.times if t >= started]


def test_a_burst_of_writes_folds_into_few_wake_ups_and_the_last_is_heard(
    database: tuple[Engine, sessionmaker[Session]], heard: tuple[Listener, Heard]
) -> None:
    _, sessions = database
    _, calls = heard
    started = time.monotonic()
    for n in range(60):
        with sessions.begin() as session:
            upsert_items(session, [item(n)])
    last_commit = time.monotonic()
    assert calls.wait(last_commit), "the burst's last write was not heard"
    woken = [t for t in calls.times if t >= started]
    assert len(woken) < 60, "every commit woke the followers"


def test_the_listener_reconnects_after_its_connection_drops(
    database: tuple[Engine, sessionmaker[Session]], heard: tuple[Listener, Heard]
) -> None:
    engine, sessions = database
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's listener holds no connection (it watches a file)")
    listener, calls = heard
    with engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            )
        ).all()
    assert killed, "the listening connection was not found"
    deadline = time.monotonic() + 15
    while listener.listening.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)  # it notices at its next wait (at most a second)
    assert listener.listening.wait(15), "the listener did not reconnect"
    time.sleep(0.1)
    before = time.monotonic()
    with sessions.begin() as session:
        upsert_items(session, [item(7)])
    assert calls.wait(before), "a write after the reconnection was not heard"
