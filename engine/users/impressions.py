"""Serve-time logging: what each search showed and with which features, written off the
request path in batches, so clicks that name a request_id become labelled examples."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from engine.core.clock import utcnow
from engine.core.poller import Poller
from engine.store import sql_bulk
from engine.store.models import Impression

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shown:
    request_id: str
    user_id: str | None
    item_ids: list[str]
    names: tuple[str, ...]
    features: np.ndarray  # (shown, names) float: one row per shown item, in names order
    model_version: str
    index_version: str
    ts: datetime
    experiment_id: int | None = None  # an interleaved request: which side showed each item
    teams: list[str] | None = None  # "live" or "candidate", per shown item
    query: str | None = None  # the search's text: a click on it is a (query, item) positive


class ImpressionLog:
    """A queue drained by one background thread; `log` never blocks on the database.

    When the queue is full (the database is down or slow) new entries are dropped and
    counted: losing some training examples beats slowing or failing searches.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        retention_days: float,
        *,
        batch: int = 500,
        interval_s: float = 0.5,
        max_pending: int = 10_000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.retention = timedelta(days=retention_days)
        self.batch = batch
        self.interval_s = interval_s
        self.clock = clock
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[Shown] = queue.Queue(maxsize=max_pending)
        self._flush_lock = threading.Lock()
        # Keeps logging alive through a failed write: the next flush retries.
        self._poller = Poller(
            "impression-log", self.flush, interval_s, failed="writing impressions failed"
        )
        self._last_purge = time.monotonic()

    def log(self, shown: Shown) -> None:
        try:
            self._queue.put_nowait(shown)
        except queue.Full:
            self.dropped += 1
        if not self._poller.started:
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if not self._poller.started:
                self._poller.start()
                atexit.register(self.close)  # a server stopping writes what it queued

    def flush(self) -> int:
        """Write everything queued so far; returns the number of rows written."""
        with self._flush_lock:
            queued: list[Shown] = []
            while True:
                try:
                    queued.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not queued:
                return 0
            with self.sessions() as session, session.begin():
                rows = _rows(queued, sql_bulk.timestamp_text(session))
                for start in range(0, len(rows), self.batch):
                    sql_bulk.insert_rows(
                        session, Impression, COLUMNS, rows[start : start + self.batch]
                    )
            self.written += len(rows)
            if time.monotonic() - self._last_purge > 3600:
                self.purge()  # hourly, piggybacking on a write
            return len(rows)

    def purge(self) -> int:
        """Delete impressions older than the retention period."""
        self._last_purge = time.monotonic()
        cutoff = self.clock() - self.retention
        with self.sessions() as session, session.begin():
            result = session.execute(delete(Impression).where(Impression.ts < cutoff))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._poller.close()
        try:
            self.flush()
        except Exception:  # at exit the database may be gone; say so, do not crash
            log.exception("could not write %d queued impressions", self._queue.qsize())


# The impressions table's columns as _rows fills them.
COLUMNS = (
    "request_id",
    "user_id",
    "item_id",
    "position",
    "features",
    "model_version",
    "index_version",
    "ts",
    "experiment_id",
    "team",
    "query",
)


def _rows(queued: list[Shown], timestamp: Callable[[datetime], str]) -> list[list[object]]:
    """One list per shown item, in COLUMNS order, as sql_bulk.insert_rows takes them.

    This runs in the writer thread holding the GIL, while searches in the process wait for
    it: what a search shares is formatted once per search, and each row costs one list and
    one orjson call (its features: {"names": [...], "values": [...]}, the ORM's format).
    """
    rows: list[list[object]] = []
    for shown in queued:
        names = list(shown.names)
        ts = timestamp(shown.ts)
        teams = shown.teams
        for position, (item_id, values) in enumerate(
            zip(shown.item_ids, shown.features.tolist(), strict=True)
        ):
            rows.append(
                [
                    shown.request_id,
                    shown.user_id,
                    item_id,
                    position,
                    sql_bulk.json_text({"names": names, "values": values}),
                    shown.model_version,
                    shown.index_version,
                    ts,
                    shown.experiment_id,
                    teams[position] if teams else None,
                    shown.query,
                ]
            )
    return rows
