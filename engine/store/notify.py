"""Catalog changes announced to every server at once.

Servers follow the catalog by polling (the delta, the embedding follower), which bounds how
stale they can be by a poll. A write also announces itself, at commit, so every server's
`Listener` wakes its followers then: a new item reaches every worker in an encode and a read,
not in up to three polls.

- PostgreSQL: LISTEN/NOTIFY. `announce` queues a notification in the writer's transaction,
  which the server delivers at commit (never for a rolled-back write, and once however many
  rows the transaction wrote).
- SQLite (a file): a signal file beside the database, touched after the writer commits; each
  listener looks at its modification time every few tens of milliseconds (a stat call, no
  SQL). An in-memory database has no listener: its one process finds changes at a poll.

Polling stays as the floor: a notification lost with a dropped listening connection costs at
most the poll the server would have waited anyway.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from engine.core.poller import Poller

log = logging.getLogger(__name__)

# Items were written or deleted, or their vectors stored: followers should look now.
ITEMS = "recsearch_items"

# How long the PostgreSQL listener waits on a quiet channel before checking it should stop.
_IDLE_S = 1.0
# After the listening connection fails, the wait before connecting again.
_RETRY_S = 2.0
# The least time between two wake-ups, and the SQLite listener's look interval: a bulk ingest
# commits a batch every few milliseconds, and followers woken for each would re-read the
# catalog back to back. Changes within the gap fold into one wake-up at its end (none lost).
_GAP_S = 0.05


def announce(session: Session, channel: str = ITEMS) -> None:
    """Tell every listening server, when this transaction commits, that channel changed."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})
        return
    path = signal_path(bind.engine.url, channel)
    if path is not None and not session.info.get(("announced", channel)):
        session.info[("announced", channel)] = True

        def touch(committed: Session) -> None:
            committed.info.pop(("announced", channel), None)
            try:
                path.touch(mode=0o600)
                os.utime(path)  # touch() keeps the mtime of a file it cannot create
            except OSError:
                log.warning("could not signal %s; servers find the change at a poll", path)

        event.listen(session, "after_commit", touch, once=True)
        event.listen(
            session,
            "after_rollback",
            lambda rolled: rolled.info.pop(("announced", channel), None),
            once=True,
        )


def signal_path(url: URL, channel: str = ITEMS) -> Path | None:
    """The SQLite signal file for channel (None for PostgreSQL or an in-memory database)."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(f"{url.database}.{channel}")


class Listener:
    """Calls every callback when its channel is announced (at most once per _GAP_S).

    Runs in a daemon thread: on PostgreSQL on a connection of its own, outside the pool (it is
    held for good, in autocommit), reconnecting after a failure; on SQLite watching the signal
    file. Does nothing for an in-memory database.
    """

    def __init__(
        self,
        engine: Engine,
        callbacks: Sequence[Callable[[], None]],
        channel: str = ITEMS,
    ) -> None:
        self.channel = channel
        self.callbacks = list(callbacks)
        self._postgres = engine.url.get_backend_name() == "postgresql"
        self._engine = create_engine(engine.url, poolclass=NullPool) if self._postgres else None
        self._signal = signal_path(engine.url, channel)
        self.enabled = self._postgres or self._signal is not None
        self.received = 0  # announcements seen, for tests and reports
        self.listening = threading.Event()  # set while changes are being heard
        # Each round listens until stopped; after a failure, polling alone serves until the
        # next round (_RETRY_S later) listens again.
        self._poller = Poller(
            "catalog-listener",
            self._listen_postgres if self._postgres else self._watch_file,
            _RETRY_S,
            at_start=True,
            failed="listening for catalog changes failed; polling alone until it recovers",
            level=logging.WARNING,
            on_error=lambda _: self.listening.clear(),
        )
        self._stop = self._poller.stopping

    def start(self) -> None:
        if self.enabled:
            self._poller.start()

    def _listen_postgres(self) -> None:
        assert self._engine is not None
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f'LISTEN "{self.channel}"')
            driver = conn.connection.driver_connection
            assert driver is not None
            self.listening.set()
            # What was written while nobody listened is the polls' to find; wake the
            # followers once so they look now rather than at their next poll.
            self._deliver()
            last, due = time.monotonic(), False
            while not self._stop.is_set():
                wait = max(last + _GAP_S - time.monotonic(), 0.001) if due else _IDLE_S
                for _ in driver.notifies(timeout=wait, stop_after=1):
                    self.received += 1
                    due = True
                if due and time.monotonic() - last >= _GAP_S:
                    last, due = time.monotonic(), False
                    self._deliver()

    def _watch_file(self) -> None:
        assert self._signal is not None
        seen = _mtime(self._signal)
        self.listening.set()
        while not self._stop.wait(_GAP_S):
            now = _mtime(self._signal)
            if now != seen:
                seen = now
                self.received += 1
                self._deliver()

    def _deliver(self) -> None:
        for callback in self.callbacks:
            try:
                callback()
            except Exception:  # one follower's failure must not silence the others
                log.exception("a catalog-change callback failed")

    def close(self) -> None:
        self._poller.close(timeout_s=_IDLE_S + 5)
        if self._engine is not None:
            self._engine.dispose()


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
