"""Rules and the running experiment are read in the background, never inside a search once a
process has them (engine.core.reloaded); a write in the process is seen at once, one in another
process within the reload period."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import event

from engine.core.reloaded import Reloaded
from engine.ranking import rule_store
from engine.ranking.schemas import RuleIn
from engine.runtime import Runtime
from engine.search.request import SearchRequest

# The tables the two caches read.
RULES, EXPERIMENTS = "FROM rules", "FROM experiments"
TABLES = (RULES, EXPERIMENTS)


def _reads_of(runtime: Runtime) -> tuple[list[str], list[str], Any]:
    """(statements on the rules/experiment tables from this thread, from other threads, the
    listener to remove)."""
    here: list[str] = []
    elsewhere: list[str] = []
    me = threading.get_ident()

    def record(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if any(table in sql for table in TABLES):
            (here if threading.get_ident() == me else elsewhere).append(sql)

    event.listen(runtime.db, "before_cursor_execute", record)
    return here, elsewhere, record


def test_searches_take_the_rules_and_the_experiment_without_reading_them(
    built: Runtime,
) -> None:
    built.rules.reload_s = built.experiments.reload_s = 0.05  # once the threads next wait
    built.rules.invalidate()  # as after a write here (or in a fresh process): ...
    built.experiments.invalidate()
    here, elsewhere, record = _reads_of(built)
    try:
        with built.read_session() as session:  # ... the next search reads them
            built.searcher.search(session, SearchRequest(q="temples and gardens"))
        assert len([s for s in here if RULES in s]) == 1, here
        assert len([s for s in here if EXPERIMENTS in s]) == 1, here
        here.clear()
        deadline = time.monotonic() + 1.5  # past a period the threads may have begun before
        searches = 0
        while time.monotonic() < deadline:
            with built.read_session() as session:
                built.searcher.search(session, SearchRequest(q="temples and gardens"))
            searches += 1
        assert searches >= 5
        assert here == [], "a search read the rules or the experiment itself"
        # Meanwhile the background threads kept reading both.
        assert any(RULES in s for s in elsewhere), elsewhere
        assert any(EXPERIMENTS in s for s in elsewhere), elsewhere
    finally:
        event.remove(built.db, "before_cursor_execute", record)


def test_a_rule_written_here_acts_at_once_and_elsewhere_within_the_period(
    built: Runtime, embedder: Any
) -> None:
    other = Runtime(built.settings, embedder=embedder)  # another worker on the same data
    try:
        other.rules.reload_s = 0.1
        assert built.rules.get() == [] and other.rules.get() == []
        with built.write_session() as session:
            rule_store.create(session, RuleIn(action="hide", item_id="kyoto-japan"))
        built.rules.invalidate()  # as the admin API does after a write
        assert [r.item_id for r in built.rules.get()] == ["kyoto-japan"]
        deadline = time.monotonic() + 10
        while not other.rules.get() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.item_id for r in other.rules.get()] == ["kyoto-japan"]
        # And the other worker's searches apply it: the hidden item is never shown.
        with other.read_session() as session:
            found = other.searcher.search(session, SearchRequest(q="Kyoto temples", k=20))
        assert "kyoto-japan" not in [h.id for h in found.results]
    finally:
        other.close()


def test_a_background_read_from_before_a_write_does_not_put_back_the_old_value() -> None:
    stored = ["old"]
    started, release = threading.Event(), threading.Event()
    slow = threading.local()

    def read(previous: str | None) -> str:
        value = stored[0]  # read before the write below commits
        if getattr(slow, "on", False):
            started.set()
            assert release.wait(5)
        return value

    cache = Reloaded(read, 3600.0, "test value")
    try:
        assert cache.get() == "old"

        def background() -> None:
            slow.on = True
            cache.refresh()

        thread = threading.Thread(target=background)
        thread.start()
        assert started.wait(5)  # the background read has the old value in hand
        stored[0] = "new"  # a write in this process ...
        cache.invalidate()  # ... which the writer announces
        assert cache.get() == "new"
        release.set()
        thread.join(5)
        assert cache.get() == "new", "the stale background read replaced the write"
        cache.refresh()  # a background read after the write keeps it
        assert cache.get() == "new"
    finally:
        cache.close()


def test_a_failed_background_read_keeps_the_value_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[Any] = ["first", RuntimeError("database away"), "third"]
    reads = threading.Event()

    def read(previous: str | None) -> str:
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if outcome == "third":
            reads.set()
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    cache = Reloaded(read, 0.02, "test value")
    try:
        assert cache.get() == "first"
        assert reads.wait(5)  # the failed read, then the next one
        deadline = time.monotonic() + 5
        while cache.get() != "third" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.get() == "third"
        assert "reading the test value again failed" in caplog.text
    finally:
        cache.close()
    assert cache._poller.started and not [
        t for t in threading.enumerate() if t.name == "test value"
    ]


def test_close_before_any_read_starts_no_thread() -> None:
    cache = Reloaded(lambda previous: 1, 0.01, "test value")
    cache.close()
    assert cache.get() == 1  # still answers, read in place
    assert not cache._poller.started
